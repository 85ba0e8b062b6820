//! Identities, peers, derived keys, and sealing/opening envelopes.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::signing::SigningKey;

use super::envelope::{self, Envelope, Header, KIND_DIRECT, KIND_TOPIC, MAX_PAYLOAD};
use super::merkle::{self, Hash, Tree};
use super::replay::{Freshness, ReplayGuard};
use super::{random, CryptoError, Result};

/// Most messages one batch signature covers (bounds the audit path to 16 hashes).
pub const MAX_BATCH: usize = 65_536;
const SIG_SINGLE: &[u8] = b"symbi.bus.sig.single.v1";
const SIG_BATCH: &[u8] = b"symbi.bus.sig.batch.v1";
/// Batches remembered (the last verified proof of each); a full cache is simply cleared
/// (the next envelope of a batch then verifies its signature again).
const MEMO_CACHE: usize = 4096;
/// Envelope and payload buffers kept for reuse, and the largest one kept: steady traffic
/// seals and opens without a heap allocation per message.
const POOL_BUFFERS: usize = 4096;
const POOL_MAX_BYTES: usize = 64 * 1024;

/// The last verified proof of a batch: the nodes on its path (level 0 = leaf, last = the
/// signed root), how many path hashes were used below each level, and the path itself.
/// The next envelope of the batch climbs only to where its path joins this one, then
/// must match it exactly, so every byte of every proof is still checked.
struct BatchMemo {
    size: u32,
    index: usize,
    nodes: Vec<Hash>,
    used: Vec<usize>,
    /// The path's sibling hashes, 32 bytes each.
    path: Vec<u8>,
}

pub type KeyId = [u8; 8];

fn key_id(ed: &VerifyingKey, x: &PublicKey) -> KeyId {
    let mut h = Sha256::new();
    h.update(ed.as_bytes());
    h.update(x.as_bytes());
    h.finalize()[..8].try_into().expect("8 bytes")
}

/// What other parties may know of an agent: 32-byte Ed25519 key then 32-byte X25519 key.
#[derive(Clone)]
pub struct Peer {
    pub verify: VerifyingKey,
    pub dh: PublicKey,
    pub key_id: KeyId,
}

impl Peer {
    pub fn bundle(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[..32].copy_from_slice(self.verify.as_bytes());
        b[32..].copy_from_slice(self.dh.as_bytes());
        b
    }

    pub fn from_bundle(agent: &str, b: &[u8]) -> Result<Peer> {
        if b.len() != 64 {
            return Err(CryptoError::Invalid {
                what: "public bundle",
                detail: format!("is 64 bytes (Ed25519 key, X25519 key), got {}", b.len()),
            });
        }
        let ed: [u8; 32] = b[..32].try_into().expect("32");
        let x: [u8; 32] = b[32..].try_into().expect("32");
        let verify = VerifyingKey::from_bytes(&ed).map_err(|e| CryptoError::Invalid {
            what: "public bundle",
            detail: format!("the Ed25519 key of {agent:?} is invalid: {e}"),
        })?;
        // A weak (small-order) key would let anyone forge its signatures; refusing it
        // here, once, is what lets `verify_signature` use the cheaper cofactorless check.
        if verify.is_weak() {
            return Err(CryptoError::Invalid {
                what: "public bundle",
                detail: format!("the Ed25519 key of {agent:?} is a weak (small-order) key"),
            });
        }
        let dh = PublicKey::from(x);
        Ok(Peer {
            key_id: key_id(&verify, &dh),
            verify,
            dh,
        })
    }
}

struct Identity {
    sign: SigningKey,
    dh: StaticSecret,
    peer: Peer,
}

/// The result of opening an envelope: its header borrows the envelope; the payload is a
/// pooled buffer (hand it back with [`KeyRing::recycle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened<'a> {
    pub header: Header<'a>,
    pub payload: Vec<u8>,
    pub duplicate: bool,
}

/// One item of a batch to seal.
pub struct SealItem<'a> {
    pub recipient: &'a str,
    pub topic: bool,
    pub content_type: &'a str,
    pub payload: &'a [u8],
}

#[derive(Default)]
pub struct KeyRing {
    identities: HashMap<String, Identity>,
    peers: HashMap<String, Peer>,
    pair_keys: HashMap<(KeyId, KeyId), Aes256Gcm>,
    /// The key each topic is sealed under (created by a publisher, or the first received).
    topics: HashMap<String, (KeyId, Aes256Gcm, [u8; 32])>,
    /// Every group key known for a topic, by key id: what opening uses, so messages sealed
    /// under another runtime's key (or a previous key) still open.
    topic_openers: HashMap<String, HashMap<KeyId, Aes256Gcm>>,
    batch_memo: HashMap<(KeyId, [u8; 64]), BatchMemo>,
    replay: HashMap<String, ReplayGuard>,
    replay_window_ns: u64,
    pool: Vec<Vec<u8>>,
    tree: Tree,
    leaves: Vec<Hash>,
    rnd: Vec<u8>,
    scratch_nodes: Vec<Hash>,
    scratch_used: Vec<usize>,
}

/// A message id (16 bytes) and an AES-GCM nonce (12 bytes) from 28 random bytes.
fn split_random(r: &[u8]) -> ([u8; 16], [u8; 12]) {
    (
        r[..16].try_into().expect("16 bytes"),
        r[16..28].try_into().expect("12 bytes"),
    )
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl KeyRing {
    pub fn new(replay_window_ns: u64) -> Self {
        Self {
            replay_window_ns,
            ..Default::default()
        }
    }

    pub fn create_identity(&mut self, agent: &str) -> Result<[u8; 64]> {
        if agent.is_empty() || agent.len() > 255 {
            return Err(CryptoError::Invalid {
                what: "agent id",
                detail: "must be 1 to 255 bytes".into(),
            });
        }
        if self.identities.contains_key(agent) {
            return Err(CryptoError::DuplicateAgent(agent.into()));
        }
        let sign = SigningKey::generate();
        let dh = StaticSecret::from(random::<32>());
        let verify = sign.verifying_key();
        let dh_pub = PublicKey::from(&dh);
        let peer = Peer {
            key_id: key_id(&verify, &dh_pub),
            verify,
            dh: dh_pub,
        };
        let bundle = peer.bundle();
        self.peers.insert(agent.into(), peer.clone());
        self.identities
            .insert(agent.into(), Identity { sign, dh, peer });
        Ok(bundle)
    }

    pub fn add_peer(&mut self, agent: &str, bundle: &[u8]) -> Result<()> {
        let peer = Peer::from_bundle(agent, bundle)?;
        if let Some(local) = self.identities.get(agent) {
            if local.peer.key_id != peer.key_id {
                return Err(CryptoError::DuplicateAgent(agent.into()));
            }
        }
        self.peers.insert(agent.into(), peer);
        Ok(())
    }

    pub fn remove(&mut self, agent: &str) -> bool {
        self.replay.remove(agent);
        let had = self.identities.remove(agent).is_some();
        self.peers.remove(agent).is_some() || had
    }

    pub fn bundle(&self, agent: &str) -> Result<[u8; 64]> {
        self.peers
            .get(agent)
            .map(Peer::bundle)
            .ok_or_else(|| CryptoError::UnknownAgent(agent.into()))
    }

    pub fn has_identity(&self, agent: &str) -> bool {
        self.identities.contains_key(agent)
    }

    /// The topic's group key, created on first use by a publisher.
    pub fn ensure_topic(&mut self, topic: &str) -> [u8; 32] {
        if let Some((_, _, raw)) = self.topics.get(topic) {
            return *raw;
        }
        let raw = random::<32>();
        self.set_topic_key(topic, &raw).expect("32-byte key");
        raw
    }

    pub fn set_topic_key(&mut self, topic: &str, raw: &[u8]) -> Result<()> {
        let raw: [u8; 32] = raw.try_into().map_err(|_| CryptoError::Invalid {
            what: "topic key",
            detail: format!("is 32 bytes, got {}", raw.len()),
        })?;
        let id: KeyId = Sha256::digest(raw)[..8].try_into().expect("8");
        let cipher = Aes256Gcm::new_from_slice(&raw).expect("32-byte key");
        self.topic_openers
            .entry(topic.into())
            .or_default()
            .insert(id, cipher.clone());
        self.topics.insert(topic.into(), (id, cipher, raw));
        Ok(())
    }

    /// Learn a group key for opening `topic` messages (e.g. received from a remote
    /// publisher). It becomes the sealing key only when the topic has none yet, so the
    /// publishers of one runtime keep agreeing with each other. Returns its key id.
    pub fn add_topic_key(&mut self, topic: &str, raw: &[u8]) -> Result<KeyId> {
        let arr: [u8; 32] = raw.try_into().map_err(|_| CryptoError::Invalid {
            what: "topic key",
            detail: format!("is 32 bytes, got {}", raw.len()),
        })?;
        let id: KeyId = Sha256::digest(arr)[..8].try_into().expect("8");
        if !self.topics.contains_key(topic) {
            self.set_topic_key(topic, &arr)?;
        } else {
            let cipher = Aes256Gcm::new_from_slice(&arr).expect("32-byte key");
            self.topic_openers
                .entry(topic.into())
                .or_default()
                .insert(id, cipher);
        }
        Ok(id)
    }

    /// Whether a group key with this id is known for `topic`.
    pub fn has_topic_key(&self, topic: &str, key_id: &[u8]) -> bool {
        let Ok(kid) = <KeyId>::try_from(key_id) else {
            return false;
        };
        self.topic_openers
            .get(topic)
            .is_some_and(|keys| keys.contains_key(&kid))
    }

    /// The id of the key `topic` is sealed under, if it has one.
    pub fn topic_key_id(&self, topic: &str) -> Option<KeyId> {
        self.topics.get(topic).map(|t| t.0)
    }

    fn pair_cipher(
        &mut self,
        sender: &str,
        recipient: &str,
        opening: bool,
    ) -> Result<(KeyId, KeyId, &Aes256Gcm)> {
        // The local side holds a secret; the other side's public key comes from peers.
        let (local, remote) = if opening {
            (recipient, sender)
        } else {
            (sender, recipient)
        };
        let me = self
            .identities
            .get(local)
            .ok_or_else(|| CryptoError::UnknownAgent(local.into()))?;
        let other = self
            .peers
            .get(remote)
            .ok_or_else(|| CryptoError::UnknownAgent(remote.into()))?;
        let (s_id, r_id) = if opening {
            (other.key_id, me.peer.key_id)
        } else {
            (me.peer.key_id, other.key_id)
        };
        if let Entry::Vacant(slot) = self.pair_keys.entry((s_id, r_id)) {
            let shared = me.dh.diffie_hellman(&other.dh);
            if !shared.was_contributory() {
                return Err(CryptoError::WeakKey(remote.into()));
            }
            let hk = Hkdf::<Sha256>::new(Some(b"symbi.bus.v1"), shared.as_bytes());
            let mut okm = [0u8; 32];
            let mut info = Vec::with_capacity(20);
            info.extend_from_slice(b"pair");
            info.extend_from_slice(&s_id);
            info.extend_from_slice(&r_id);
            hk.expand(&info, &mut okm)
                .expect("32 bytes is a valid HKDF length");
            slot.insert(Aes256Gcm::new_from_slice(&okm).expect("32-byte key"));
        }
        Ok((s_id, r_id, &self.pair_keys[&(s_id, r_id)]))
    }

    /// A buffer from the pool (or a new one).
    fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.pool.pop().unwrap_or_default();
        b.clear();
        b
    }

    /// Return buffers (sealed envelopes, opened payloads) for reuse.
    pub fn recycle(&mut self, bufs: impl IntoIterator<Item = Vec<u8>>) {
        for b in bufs {
            if self.pool.len() >= POOL_BUFFERS {
                break;
            }
            if b.capacity() <= POOL_MAX_BYTES {
                self.pool.push(b);
            }
        }
    }

    /// Encrypt one item into `out` as `header | ciphertext_len | ciphertext` (the part
    /// the signature covers); returns the header length.
    fn encrypt_into(
        &self,
        sender: &str,
        item: &SealItem<'_>,
        id: [u8; 16],
        nonce: [u8; 12],
        ts: u64,
        out: &mut Vec<u8>,
    ) -> Result<usize> {
        if item.payload.len() > MAX_PAYLOAD {
            return Err(CryptoError::Invalid {
                what: "payload",
                detail: format!(
                    "{} bytes is over the {} byte limit; split it or send a reference",
                    item.payload.len(),
                    MAX_PAYLOAD
                ),
            });
        }
        let (kind, s_id, r_id, cipher) = if item.topic {
            let me = self
                .identities
                .get(sender)
                .ok_or_else(|| CryptoError::UnknownAgent(sender.into()))?;
            let t = &self.topics[item.recipient];
            (KIND_TOPIC, me.peer.key_id, t.0, &t.1)
        } else {
            let s_id = self.identities[sender].peer.key_id;
            let r_id = self.peers[item.recipient].key_id;
            (KIND_DIRECT, s_id, r_id, &self.pair_keys[&(s_id, r_id)])
        };
        let header = Header {
            kind,
            id,
            timestamp_ns: ts,
            sender,
            recipient: item.recipient,
            sender_key: s_id,
            recipient_key: r_id,
            nonce,
            content_type: item.content_type,
        };
        out.clear();
        envelope::write_header(&header, out)?;
        let hl = out.len();
        out.extend_from_slice(&((item.payload.len() + envelope::TAG_LEN) as u32).to_be_bytes());
        out.extend_from_slice(item.payload);
        let (head, body) = out.split_at_mut(hl + 4);
        let tag = cipher
            .encrypt_inout_detached(&Nonce::from(nonce), &head[..hl], body.into())
            .map_err(|_| CryptoError::Invalid {
                what: "payload",
                detail: "AES-GCM refused to encrypt it".into(),
            })?;
        out.extend_from_slice(&tag);
        Ok(hl)
    }

    /// Make sure the keys `item` is sealed under exist (topic key, pair key).
    fn prepare(&mut self, sender: &str, item: &SealItem<'_>) -> Result<()> {
        if item.topic {
            self.ensure_topic(item.recipient);
            if !self.identities.contains_key(sender) {
                return Err(CryptoError::UnknownAgent(sender.into()));
            }
        } else {
            self.pair_cipher(sender, item.recipient, false)?;
        }
        Ok(())
    }

    /// The leaf hash of a buffer laid out by `encrypt_into`.
    fn leaf_of(buf: &[u8], header_len: usize) -> Hash {
        envelope::leaf(&buf[..header_len], &buf[header_len + 4..])
    }

    /// Seal one message, signed on its own, into a pooled buffer.
    pub fn seal(&mut self, sender: &str, item: &SealItem<'_>, ts: Option<u64>) -> Result<Vec<u8>> {
        let ts = ts.unwrap_or_else(now_ns);
        let r = random::<28>();
        let (id, nonce) = split_random(&r);
        self.prepare(sender, item)?;
        let mut buf = self.buffer();
        let hl = match self.encrypt_into(sender, item, id, nonce, ts, &mut buf) {
            Ok(hl) => hl,
            Err(e) => {
                self.recycle([buf]);
                return Err(e);
            }
        };
        let leaf = Self::leaf_of(&buf, hl);
        let mut msg = [0u8; SIG_SINGLE.len() + 32];
        msg[..SIG_SINGLE.len()].copy_from_slice(SIG_SINGLE);
        msg[SIG_SINGLE.len()..].copy_from_slice(&leaf);
        let sig = self.identities[sender].sign.sign(&msg);
        envelope::write_single_signature(&sig, &mut buf);
        Ok(buf)
    }

    /// Seal many messages from one sender under one signature over their Merkle root.
    pub fn seal_batch(
        &mut self,
        sender: &str,
        items: &[SealItem<'_>],
        ts: Option<u64>,
    ) -> Result<Vec<Vec<u8>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        if items.len() == 1 {
            return Ok(vec![self.seal(sender, &items[0], ts)?]);
        }
        if items.len() > MAX_BATCH {
            return Err(CryptoError::Invalid {
                what: "batch",
                detail: format!("at most {MAX_BATCH} messages, got {}", items.len()),
            });
        }
        let ts = ts.unwrap_or_else(now_ns);
        for it in items {
            self.prepare(sender, it)?;
        }
        // One call to the OS for the whole batch's ids and nonces.
        let mut rnd = std::mem::take(&mut self.rnd);
        rnd.resize(28 * items.len(), 0);
        getrandom::fill(&mut rnd).expect("the operating system random source failed");
        let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(items.len());
        let mut leaves = std::mem::take(&mut self.leaves);
        leaves.clear();
        let mut failed = None;
        for (it, r) in items.iter().zip(rnd.chunks_exact(28)) {
            let (id, nonce) = split_random(r);
            let mut buf = self.buffer();
            match self.encrypt_into(sender, it, id, nonce, ts, &mut buf) {
                Ok(hl) => leaves.push(Self::leaf_of(&buf, hl)),
                Err(e) => failed = Some(e),
            }
            bufs.push(buf);
            if failed.is_some() {
                break;
            }
        }
        self.rnd = rnd;
        if let Some(e) = failed {
            self.leaves = leaves;
            self.recycle(bufs);
            return Err(e);
        }
        let mut tree = std::mem::take(&mut self.tree);
        tree.build(&leaves);
        self.leaves = leaves;
        let mut msg = [0u8; SIG_BATCH.len() + 36];
        msg[..SIG_BATCH.len()].copy_from_slice(SIG_BATCH);
        msg[SIG_BATCH.len()..SIG_BATCH.len() + 32].copy_from_slice(&tree.root());
        msg[SIG_BATCH.len() + 32..].copy_from_slice(&(items.len() as u32).to_be_bytes());
        let sig = self.identities[sender].sign.sign(&msg);
        for (i, buf) in bufs.iter_mut().enumerate() {
            envelope::write_batch_signature(&sig, i, &tree, buf);
        }
        self.tree = tree;
        Ok(bufs)
    }

    fn verify_signature(&mut self, env: &Envelope<'_>, peer: &Peer) -> Result<()> {
        let fail = |detail: &str| CryptoError::Signature {
            id: envelope::id_hex(&env.header.id),
            sender: env.header.sender.to_owned(),
            detail: detail.into(),
        };
        let leaf = envelope::leaf(env.header_bytes, env.ciphertext);
        let sig = Signature::from_bytes(&env.signature);
        match &env.batch {
            None => {
                let mut msg = Vec::with_capacity(SIG_SINGLE.len() + 32);
                msg.extend_from_slice(SIG_SINGLE);
                msg.extend_from_slice(&leaf);
                // Not verify_strict: weak keys are refused when pinned (from_bundle), and
                // a malleated signature cannot replay, since the signed header's id is what
                // the replay guard remembers. That saves decompressing R (~10%).
                peer.verify
                    .verify(&msg, &sig)
                    .map_err(|_| fail("the signature does not match the message and sender key"))
            }
            Some(p) => {
                let key = (peer.key_id, env.signature);
                let (k, n) = (p.index as usize, p.size as usize);
                if k >= n || n > MAX_BATCH || p.len() > 32 {
                    return Err(fail("the batch proof is malformed"));
                }
                let memo = self.batch_memo.get(&key).filter(|m| m.size == p.size);
                // Scratch lists kept in the ring: no allocation per envelope.
                let mut nodes = std::mem::take(&mut self.scratch_nodes);
                let mut used = std::mem::take(&mut self.scratch_used);
                nodes.clear();
                used.clear();
                nodes.push(leaf);
                used.push(0);
                let (mut cur, mut idx, mut sz, mut pos, mut level) = (leaf, k, n, 0usize, 0usize);
                let mut merged = false;
                loop {
                    if let Some(m) = memo {
                        if k >> level == m.index >> level {
                            // Same node as the verified proof from here up: it must be equal,
                            // and so must the rest of the path.
                            let tail = m.path.get(m.used[level] * 32..).unwrap_or(&[]);
                            if cur != m.nodes[level] || p.path.get(pos * 32..) != Some(tail) {
                                return Err(fail("the batch proof does not match its signed tree"));
                            }
                            nodes.extend_from_slice(&m.nodes[level + 1..]);
                            let base = m.used[level];
                            used.extend(m.used[level + 1..].iter().map(|u| pos + u - base));
                            merged = true;
                            break;
                        }
                    }
                    if sz <= 1 {
                        break;
                    }
                    if idx ^ 1 < sz {
                        let s = p
                            .node(pos)
                            .ok_or_else(|| fail("the batch proof is malformed"))?;
                        pos += 1;
                        cur = if idx % 2 == 0 {
                            merkle::node(&cur, s)
                        } else {
                            merkle::node(s, &cur)
                        };
                    }
                    idx /= 2;
                    sz = sz.div_ceil(2);
                    level += 1;
                    nodes.push(cur);
                    used.push(pos);
                }
                if !merged {
                    if pos != p.len() {
                        return Err(fail("the batch proof is malformed"));
                    }
                    let mut msg = Vec::with_capacity(SIG_BATCH.len() + 36);
                    msg.extend_from_slice(SIG_BATCH);
                    msg.extend_from_slice(&cur);
                    msg.extend_from_slice(&p.size.to_be_bytes());
                    peer.verify.verify(&msg, &sig).map_err(|_| {
                        fail("the batch signature does not match the message and sender key")
                    })?;
                }
                if self.batch_memo.len() >= MEMO_CACHE && !self.batch_memo.contains_key(&key) {
                    self.batch_memo.clear();
                }
                // Overwrite the batch's memo in place: no allocation once it exists.
                let m = self.batch_memo.entry(key).or_insert_with(|| BatchMemo {
                    size: p.size,
                    index: k,
                    nodes: Vec::new(),
                    used: Vec::new(),
                    path: Vec::new(),
                });
                m.size = p.size;
                m.index = k;
                m.nodes.clear();
                m.nodes.extend_from_slice(&nodes);
                m.used.clear();
                m.used.extend_from_slice(&used);
                m.path.clear();
                m.path.extend_from_slice(p.path);
                self.scratch_nodes = nodes;
                self.scratch_used = used;
                Ok(())
            }
        }
    }

    /// Verify, check freshness, and decrypt an envelope addressed to `opener` (an agent
    /// id; for topic messages, a subscriber holding the topic key).
    pub fn open<'a>(
        &mut self,
        opener: &str,
        buf: &'a [u8],
        now: Option<u64>,
    ) -> Result<Opened<'a>> {
        let env = envelope::parse(buf)?;
        let h = &env.header;
        let id = || envelope::id_hex(&h.id);
        if h.kind == KIND_DIRECT && h.recipient != opener {
            return Err(CryptoError::WrongRecipient {
                id: id(),
                recipient: h.recipient.to_owned(),
                opener: opener.into(),
            });
        }
        if !self.identities.contains_key(opener) {
            return Err(CryptoError::UnknownAgent(opener.into()));
        }
        let peer = self
            .peers
            .get(h.sender)
            .cloned()
            .ok_or_else(|| CryptoError::UnknownAgent(h.sender.to_owned()))?;
        if peer.key_id != h.sender_key {
            return Err(CryptoError::Signature {
                id: id(),
                sender: h.sender.to_owned(),
                detail: "signed with a key that is not the sender's current key".into(),
            });
        }
        self.verify_signature(&env, &peer)?;
        // Resolve the key first: an envelope this ring cannot open yet (an unknown topic
        // key) must not be remembered as seen, or it could never be opened later.
        let cipher = if h.kind == KIND_TOPIC {
            self.topic_openers
                .get(h.recipient)
                .and_then(|keys| keys.get(&h.recipient_key))
                .ok_or_else(|| CryptoError::UnknownTopic(h.recipient.to_owned()))?
                .clone()
        } else {
            let (_, r, c) = self.pair_cipher(h.sender, opener, true)?;
            if r != h.recipient_key {
                return Err(CryptoError::Decrypt { id: id() });
            }
            c.clone()
        };
        let now = now.unwrap_or_else(now_ns);
        let window = self.replay_window_ns;
        if !self.replay.contains_key(opener) {
            self.replay.insert(opener.into(), ReplayGuard::new(window));
        }
        let fresh =
            self.replay
                .get_mut(opener)
                .expect("inserted above")
                .check(h.id, h.timestamp_ns, now);
        if fresh == Freshness::Stale {
            return Err(CryptoError::Invalid {
                what: "timestamp",
                detail: format!(
                    "message {} is outside the {}s replay window; it is a replay or the clocks disagree",
                    id(),
                    window / 1_000_000_000
                ),
            });
        }
        let n = env.ciphertext.len() - envelope::TAG_LEN;
        let mut pt = self.buffer();
        pt.extend_from_slice(&env.ciphertext[..n]);
        let tag = Tag::try_from(&env.ciphertext[n..]).expect("16-byte tag");
        if cipher
            .decrypt_inout_detached(
                &Nonce::from(h.nonce),
                env.header_bytes,
                pt.as_mut_slice().into(),
                &tag,
            )
            .is_err()
        {
            self.recycle([pt]);
            return Err(CryptoError::Decrypt { id: id() });
        }
        Ok(Opened {
            header: env.header,
            payload: pt,
            duplicate: fresh == Freshness::Duplicate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    /// Counts this thread's heap allocations (the test binary's allocator; other
    /// threads' tests do not disturb the count).
    struct Counting;

    thread_local! {
        static ALLOCS: Cell<usize> = const { Cell::new(0) };
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            ALLOCS.with(|c| c.set(c.get() + 1));
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            ALLOCS.with(|c| c.set(c.get() + 1));
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    fn allocations(f: impl FnOnce()) -> usize {
        let before = ALLOCS.with(Cell::get);
        f();
        ALLOCS.with(Cell::get) - before
    }

    #[test]
    fn warm_seal_and_open_allocate_per_batch_not_per_message() {
        let mut r = ring();
        let payload = [7u8; 200];
        let run = |r: &mut KeyRing, n: usize| {
            let items: Vec<SealItem<'_>> = (0..n).map(|_| item("bob", &payload)).collect();
            let sealed = allocations(|| {
                let envs = r.seal_batch("alice", &items, None).unwrap();
                r.recycle(envs);
            });
            let envs = r.seal_batch("alice", &items, None).unwrap();
            let opened = allocations(|| {
                for e in &envs {
                    let o = r.open("bob", e, None).unwrap();
                    assert_eq!(o.payload, payload);
                    r.recycle([o.payload]);
                }
            });
            r.recycle(envs);
            (sealed, opened)
        };
        run(&mut r, 1024); // warm the pools, the memo and the replay guard
        run(&mut r, 1024);
        let (seal_small, open_small) = run(&mut r, 64);
        let (seal_big, open_big) = run(&mut r, 1024);
        // 16x the messages: only per-batch allocations (the result list, tree levels) and
        // the replay guard's amortised growth may differ, never one per message.
        assert!(
            seal_big <= seal_small + 8,
            "seal: {seal_small} -> {seal_big}"
        );
        assert!(
            open_big <= open_small + 16,
            "open: {open_small} -> {open_big}"
        );
    }

    fn ring() -> KeyRing {
        let mut r = KeyRing::new(30_000_000_000);
        r.create_identity("alice").unwrap();
        r.create_identity("bob").unwrap();
        r
    }

    fn item<'a>(to: &'a str, payload: &'a [u8]) -> SealItem<'a> {
        SealItem {
            recipient: to,
            topic: false,
            content_type: "Task",
            payload,
        }
    }

    #[test]
    fn a_weak_peer_key_is_refused_when_pinned() {
        let mut r = ring();
        let mut bundle = [0u8; 64];
        bundle[0] = 1; // the identity point: small order, so anyone could "sign" for it
        bundle[32..].copy_from_slice(&r.bundle("bob").unwrap()[32..]);
        let err = r.add_peer("mallory", &bundle).unwrap_err().to_string();
        assert!(err.contains("weak"), "{err}");
    }

    #[test]
    fn seal_then_open_round_trips_and_hides_the_payload() {
        let mut r = ring();
        let env = r.seal("alice", &item("bob", b"secret plan"), None).unwrap();
        assert!(!env.windows(11).any(|w| w == b"secret plan"));
        let o = r.open("bob", &env, None).unwrap();
        assert_eq!(o.payload, b"secret plan");
        assert_eq!(o.header.sender, "alice");
        assert!(!o.duplicate);
        assert!(r.open("bob", &env, None).unwrap().duplicate);
    }

    #[test]
    fn any_flipped_byte_is_rejected() {
        let mut r = ring();
        let env = r.seal("alice", &item("bob", b"payload"), None).unwrap();
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x40;
            assert!(
                r.open("bob", &bad, None).is_err(),
                "byte {i} flipped went unnoticed"
            );
        }
    }

    #[test]
    fn batch_signatures_verify_and_tampering_is_caught() {
        let mut r = ring();
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 5]).collect();
        let items: Vec<SealItem<'_>> = payloads.iter().map(|p| item("bob", p)).collect();
        let envs = r.seal_batch("alice", &items, None).unwrap();
        for (e, p) in envs.iter().zip(&payloads) {
            assert_eq!(&r.open("bob", e, None).unwrap().payload, p);
        }
        let mut bad = envs[3].clone();
        let n = bad.len();
        bad[n - 40] ^= 1; // inside the audit path
        assert!(r.open("bob", &bad, None).is_err());
    }

    #[test]
    fn every_flipped_byte_of_a_batch_envelope_is_rejected_after_its_batch_verified() {
        for n in [2usize, 3, 7, 16] {
            let mut r = ring();
            let payloads: Vec<Vec<u8>> = (0..n as u8).map(|i| vec![i; 3]).collect();
            let items: Vec<SealItem<'_>> = payloads.iter().map(|p| item("bob", p)).collect();
            let envs = r.seal_batch("alice", &items, None).unwrap();
            for (i, e) in envs.iter().enumerate() {
                // open the others first so the batch is remembered, then tamper with this one
                for (j, o) in envs.iter().enumerate() {
                    if j != i {
                        let _ = r.open("bob", o, None);
                    }
                }
                for b in 0..e.len() {
                    let mut bad = e.clone();
                    bad[b] ^= 0x10;
                    assert!(
                        r.open("bob", &bad, None).is_err(),
                        "n={n} envelope {i} byte {b} flipped went unnoticed"
                    );
                }
                let o = r.open("bob", e, None).unwrap();
                assert_eq!(o.payload, payloads[i]);
            }
        }
    }

    #[test]
    fn wrong_recipient_stale_and_unknown_sender() {
        let mut r = ring();
        r.create_identity("carol").unwrap();
        let env = r.seal("alice", &item("bob", b"x"), None).unwrap();
        assert!(matches!(
            r.open("carol", &env, None),
            Err(CryptoError::WrongRecipient { .. })
        ));
        let old = r.seal("alice", &item("bob", b"x"), Some(1)).unwrap();
        assert!(matches!(
            r.open("bob", &old, None),
            Err(CryptoError::Invalid {
                what: "timestamp",
                ..
            })
        ));
        let mut other = KeyRing::new(30_000_000_000);
        other.create_identity("mallory").unwrap();
        other.add_peer("bob", &r.bundle("bob").unwrap()).unwrap();
        let forged = other.seal("mallory", &item("bob", b"x"), None).unwrap();
        assert!(matches!(
            r.open("bob", &forged, None),
            Err(CryptoError::UnknownAgent(_))
        ));
    }

    #[test]
    fn impersonation_with_another_key_fails() {
        let mut r = ring();
        // mallory claims to be alice but holds her own key
        let mut m = KeyRing::new(30_000_000_000);
        m.create_identity("alice").unwrap();
        m.add_peer("bob", &r.bundle("bob").unwrap()).unwrap();
        let env = m.seal("alice", &item("bob", b"x"), None).unwrap();
        assert!(matches!(
            r.open("bob", &env, None),
            Err(CryptoError::Signature { .. })
        ));
    }

    #[test]
    fn topics_use_the_group_key() {
        let mut r = ring();
        let key = r.ensure_topic("alerts.security");
        let env = r
            .seal(
                "alice",
                &SealItem {
                    recipient: "alerts.security",
                    topic: true,
                    content_type: "Alert",
                    payload: b"intrusion",
                },
                None,
            )
            .unwrap();
        assert_eq!(r.open("bob", &env, None).unwrap().payload, b"intrusion");
        let mut outsider = KeyRing::new(30_000_000_000);
        outsider.create_identity("eve").unwrap();
        outsider
            .add_peer("alice", &r.bundle("alice").unwrap())
            .unwrap();
        assert!(matches!(
            outsider.open("eve", &env, None),
            Err(CryptoError::UnknownTopic(_))
        ));
        outsider.set_topic_key("alerts.security", &key).unwrap();
        assert_eq!(
            outsider.open("eve", &env, None).unwrap().payload,
            b"intrusion"
        );
    }

    #[test]
    fn remote_topic_keys_open_without_replacing_the_sealing_key() {
        let mut a = ring();
        let mut b = KeyRing::new(30_000_000_000);
        b.create_identity("carol").unwrap();
        b.add_peer("alice", &a.bundle("alice").unwrap()).unwrap();
        let own = b.ensure_topic("t");
        let a_key = a.ensure_topic("t");
        let env = a
            .seal(
                "alice",
                &SealItem {
                    recipient: "t",
                    topic: true,
                    content_type: "E",
                    payload: b"hi",
                },
                None,
            )
            .unwrap();
        let kid = envelope::parse(&env).unwrap().header.recipient_key;
        assert!(!b.has_topic_key("t", &kid));
        assert!(matches!(
            b.open("carol", &env, None),
            Err(CryptoError::UnknownTopic(_))
        ));
        assert_eq!(b.add_topic_key("t", &a_key).unwrap(), kid);
        assert!(b.has_topic_key("t", &kid));
        let o = b.open("carol", &env, None).unwrap();
        assert_eq!(o.payload, b"hi");
        assert!(!o.duplicate, "a failed open must not mark the id as seen");
        assert_eq!(
            b.ensure_topic("t"),
            own,
            "the sealing key stays the runtime's own"
        );
    }

    #[test]
    fn cross_process_peers_agree_on_pair_keys() {
        let mut a = KeyRing::new(30_000_000_000);
        let mut b = KeyRing::new(30_000_000_000);
        let ab = a.create_identity("alice").unwrap();
        let bb = b.create_identity("bob").unwrap();
        a.add_peer("bob", &bb).unwrap();
        b.add_peer("alice", &ab).unwrap();
        let env = a
            .seal("alice", &item("bob", b"over the wire"), None)
            .unwrap();
        assert_eq!(b.open("bob", &env, None).unwrap().payload, b"over the wire");
    }
}
