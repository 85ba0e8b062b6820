//! The decision procedure over a compiled, atomically swapped policy set.
//!
//! Registering (one policy or many), replacing, removing or reloading policies rebuilds the
//! compiled set (rules indexed by action) once and swaps it in with one atomic store: every
//! decision sees either the old set or the new one, never a mix. Deny overrides allow; a
//! condition that fails to evaluate denies (fail closed); with `enforce` on, no matching
//! allow denies.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::ast::{expr_to_string, Effect, Expr, Map, Policy};
use super::condition::{truth, Request};
use super::{PolicyError, Result};

/// The requirements and audit settings an allow from one policy carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Obligations {
    pub policy: String,
    pub require: Map,
    pub audit: Map,
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allow,
    Deny {
        reason: String,
        policy: Option<String>,
    },
    AllowWithConditions(Vec<Arc<Obligations>>),
}

impl Decision {
    pub fn allowed(&self) -> bool {
        !matches!(self, Decision::Deny { .. })
    }

    fn deny(reason: String, policy: Option<&str>) -> Decision {
        Decision::Deny {
            reason,
            policy: policy.map(str::to_string),
        }
    }
}

struct CRule {
    policy: Arc<str>,
    /// Index of this rule within its policy, for reasons.
    index: usize,
    actions: String,
    principals: Option<Arc<HashSet<String>>>,
    condition: Option<Expr>,
    obligations: Option<Arc<Obligations>>,
}

#[derive(Default)]
struct Bucket {
    deny: Vec<Arc<CRule>>,
    allow: Vec<Arc<CRule>>,
}

/// An immutable compiled policy set.
struct Compiled {
    enforce: bool,
    by_action: HashMap<String, Bucket>,
    /// Rules for `*` only: used for actions no rule names.
    wildcard: Bucket,
    count: usize,
}

impl Compiled {
    fn build(policies: &[(String, Arc<Policy>)], enforce: bool) -> Compiled {
        let mut rules: Vec<(Vec<String>, Effect, Arc<CRule>)> = Vec::new();
        for (_, p) in policies {
            let name: Arc<str> = Arc::from(p.name.as_str());
            let principals = p
                .principals
                .as_ref()
                .map(|ps| Arc::new(ps.iter().cloned().collect::<HashSet<_>>()));
            let obligations = (!p.require.is_empty() || !p.audit.is_empty()).then(|| {
                Arc::new(Obligations {
                    policy: p.name.clone(),
                    require: p.require.clone(),
                    audit: p.audit.clone(),
                })
            });
            for (index, r) in p.rules.iter().enumerate() {
                let rule = Arc::new(CRule {
                    policy: name.clone(),
                    index,
                    actions: r.actions.join(", "),
                    principals: principals.clone(),
                    condition: r.condition.clone(),
                    obligations: obligations.clone(),
                });
                rules.push((r.actions.clone(), r.effect, rule));
            }
        }
        let mut by_action: HashMap<String, Bucket> = HashMap::new();
        let mut wildcard = Bucket::default();
        // Every named action gets its own bucket; wildcard rules go into every bucket (in
        // registration order) and into the fallback bucket.
        for (actions, _, _) in &rules {
            for a in actions {
                if a != "*" {
                    by_action.entry(a.clone()).or_default();
                }
            }
        }
        for (actions, effect, rule) in &rules {
            let push = |b: &mut Bucket| match effect {
                Effect::Allow => b.allow.push(rule.clone()),
                Effect::Deny => b.deny.push(rule.clone()),
            };
            if actions.iter().any(|a| a == "*") {
                push(&mut wildcard);
                for b in by_action.values_mut() {
                    push(b);
                }
            } else {
                let mut seen = HashSet::new();
                for a in actions {
                    if seen.insert(a) {
                        push(by_action.get_mut(a).expect("bucket created above"));
                    }
                }
            }
        }
        Compiled {
            enforce,
            by_action,
            wildcard,
            count: policies.len(),
        }
    }

    fn decide(&self, req: &Request) -> Decision {
        let action = req.action();
        let bucket = self.by_action.get(action).unwrap_or(&self.wildcard);
        let applies = |r: &CRule| {
            r.principals
                .as_ref()
                .is_none_or(|ps| ps.contains(req.principal()))
        };
        let failed = |r: &CRule, e: PolicyError| {
            Decision::deny(
                format!(
                    "policy {:?} rule {} ({}) could not be evaluated: {e}; denying (fail closed)",
                    r.policy, r.index, r.actions
                ),
                Some(&r.policy),
            )
        };
        for r in &bucket.deny {
            if !applies(r) {
                continue;
            }
            let hit = match &r.condition {
                None => true,
                Some(c) => match truth(c, req) {
                    Ok(b) => b,
                    Err(e) => return failed(r, e),
                },
            };
            if hit {
                let why = match &r.condition {
                    Some(c) => format!(" because {}", expr_to_string(c)),
                    None => String::new(),
                };
                return Decision::deny(
                    format!(
                        "policy {:?} denies {action:?} on {:?} for {:?}{why}",
                        r.policy,
                        req.resource(),
                        req.principal()
                    ),
                    Some(&r.policy),
                );
            }
        }
        let mut allowed = false;
        let mut obligations: Vec<Arc<Obligations>> = Vec::new();
        for r in &bucket.allow {
            if !applies(r) {
                continue;
            }
            let hit = match &r.condition {
                None => true,
                Some(c) => match truth(c, req) {
                    Ok(b) => b,
                    Err(e) => return failed(r, e),
                },
            };
            if hit {
                allowed = true;
                if let Some(o) = &r.obligations {
                    // Buckets are in registration order, so obligations come out in it too.
                    if !obligations.iter().any(|x| Arc::ptr_eq(x, o)) {
                        obligations.push(o.clone());
                    }
                }
            }
        }
        if !allowed {
            if self.enforce {
                return Decision::deny(
                    format!(
                        "no policy allows {action:?} on {:?} for {:?} and policies are enforced; \
                         register a policy that allows it",
                        req.resource(),
                        req.principal()
                    ),
                    None,
                );
            }
            return Decision::Allow;
        }
        if obligations.is_empty() {
            Decision::Allow
        } else {
            Decision::AllowWithConditions(obligations)
        }
    }
}

/// What writers change: the registered policies in order, the id counter, enforcement.
#[derive(Clone)]
struct Registry {
    /// Shared with earlier versions, so a writer's working copy is cheap.
    policies: Vec<(String, Arc<Policy>)>,
    seq: u64,
    enforce: bool,
}

/// The policy engine: an ordered set of registered policies and its compiled form.
pub struct Engine {
    /// Writers serialise here; readers never take it.
    registry: Mutex<Registry>,
    compiled: ArcSwap<Compiled>,
}

impl Engine {
    pub fn new(enforce: bool) -> Engine {
        Engine {
            registry: Mutex::new(Registry {
                policies: Vec::new(),
                seq: 0,
                enforce,
            }),
            compiled: ArcSwap::from_pointee(Compiled::build(&[], enforce)),
        }
    }

    /// Apply `f` to a copy of the registry; on success compile the result once, publish it
    /// with one store and keep it. On error nothing changes, so `f` may fail half-way.
    fn with_policies<T>(&self, f: impl FnOnce(&mut Registry) -> Result<T>) -> Result<T> {
        let mut g = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = g.clone();
        let out = f(&mut next)?;
        self.compiled
            .store(Arc::new(Compiled::build(&next.policies, next.enforce)));
        *g = next;
        Ok(out)
    }

    /// Append `policies` in order, giving each a fresh id.
    fn append(r: &mut Registry, policies: Vec<Policy>) -> Vec<String> {
        policies
            .into_iter()
            .map(|p| {
                r.seq += 1;
                let id = format!("{}#{}", p.name, r.seq);
                r.policies.push((id.clone(), Arc::new(p)));
                id
            })
            .collect()
    }

    pub fn register(&self, p: Policy) -> Result<String> {
        self.with_policies(|r| Ok(Self::append(r, vec![p]).remove(0)))
    }

    /// Add several policies in one atomic swap; returns their ids in order.
    pub fn register_all(&self, policies: Vec<Policy>) -> Result<Vec<String>> {
        self.with_policies(|r| Ok(Self::append(r, policies)))
    }

    /// Replace every registered policy at once; returns the new ids.
    pub fn reload(&self, policies: Vec<Policy>) -> Result<Vec<String>> {
        self.with_policies(|r| {
            r.policies.clear();
            Ok(Self::append(r, policies))
        })
    }

    /// Replace the policy under `id`, keeping its id and its place in the order.
    pub fn replace(&self, id: &str, p: Policy) -> Result<()> {
        self.with_policies(|r| {
            let slot = r
                .policies
                .iter_mut()
                .find(|(i, _)| i == id)
                .ok_or_else(|| PolicyError::UnknownPolicy(id.into()))?;
            slot.1 = Arc::new(p);
            Ok(())
        })
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        self.with_policies(|r| {
            let at = r
                .policies
                .iter()
                .position(|(i, _)| i == id)
                .ok_or_else(|| PolicyError::UnknownPolicy(id.into()))?;
            r.policies.remove(at);
            Ok(())
        })
    }

    pub fn set_enforce(&self, on: bool) {
        let _ = self.with_policies(|r| {
            r.enforce = on;
            Ok(())
        });
    }

    pub fn enforce(&self) -> bool {
        self.compiled.load().enforce
    }

    pub fn get(&self, id: &str) -> Result<Policy> {
        let g = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        g.policies
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, p)| Policy::clone(p))
            .ok_or_else(|| PolicyError::UnknownPolicy(id.into()))
    }

    pub fn ids(&self) -> Vec<String> {
        let g = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        g.policies.iter().map(|(i, _)| i.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.compiled.load().count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn evaluate(&self, req: &Request) -> Decision {
        self.compiled.load().decide(req)
    }

    /// Decide many requests against one snapshot of the policy set.
    pub fn evaluate_batch(&self, reqs: &[Result<Request>]) -> Vec<Decision> {
        self.snapshot().decide_batch(reqs)
    }

    /// The current policy set, for deciding several chunks of one batch consistently.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(self.compiled.load_full())
    }
}

/// One immutable version of the compiled policy set.
pub struct Snapshot(Arc<Compiled>);

impl Snapshot {
    pub fn decide_batch(&self, reqs: &[Result<Request>]) -> Vec<Decision> {
        reqs.iter()
            .map(|r| match r {
                Ok(r) => self.0.decide(r),
                Err(e) => Decision::deny(format!("{e}; denying (fail closed)"), None),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::ast::Value;
    use super::super::parser::parse_policies;
    use super::*;

    fn engine(text: &str, enforce: bool) -> Engine {
        let e = Engine::new(enforce);
        for p in parse_policies(text, "t").unwrap() {
            e.register(p).unwrap();
        }
        e
    }

    fn req(p: &str, a: &str, r: &str) -> Request {
        Request::new(p, a, r)
    }

    #[test]
    fn deny_overrides_allow() {
        let e = engine(
            "policy a { allow: [read, write] } policy b { deny: write }",
            true,
        );
        assert_eq!(e.evaluate(&req("x", "read", "f")), Decision::Allow);
        assert!(!e.evaluate(&req("x", "write", "f")).allowed());
    }

    #[test]
    fn enforce_on_and_off() {
        let on = engine("policy a { allow: read }", true);
        let off = engine("policy a { allow: read }", false);
        let r = req("x", "delete", "f");
        match on.evaluate(&r) {
            Decision::Deny { reason, policy } => {
                assert!(reason.contains("no policy allows"), "{reason}");
                assert_eq!(policy, None);
            }
            d => panic!("{d:?}"),
        }
        assert_eq!(off.evaluate(&r), Decision::Allow);
    }

    #[test]
    fn conditions_and_fail_closed() {
        let e = engine(
            r#"policy a { allow: read if principal.role == "admin" && context.hour < 18 }"#,
            true,
        );
        let mut r = req("x", "read", "f");
        r.principal_attrs
            .insert("role".into(), Value::Str("admin".into()));
        r.context.insert("hour".into(), Value::Int(9));
        assert_eq!(e.evaluate(&r), Decision::Allow);
        r.context.insert("hour".into(), Value::Int(20));
        assert!(!e.evaluate(&r).allowed());
        r.context.insert("hour".into(), Value::Str("nine".into()));
        match e.evaluate(&r) {
            Decision::Deny { reason, .. } => {
                assert!(reason.contains("cannot apply `<`"), "{reason}")
            }
            d => panic!("{d:?}"),
        }
        r.context.clear();
        match e.evaluate(&r) {
            Decision::Deny { reason, .. } => {
                assert!(reason.contains("context.hour is missing"), "{reason}")
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn obligations_from_matching_allows() {
        let e = engine(
            r#"policy a { allow: send require: { encryption: "aes256", rate_limit: 100 } audit: { log_level: "info" } }
               policy b { allow: read require: { max_memory_mb: 64 } }"#,
            true,
        );
        match e.evaluate(&req("x", "send", "y")) {
            Decision::AllowWithConditions(os) => {
                assert_eq!(os.len(), 1);
                assert_eq!(os[0].require.get("rate_limit"), Some(&Value::Int(100)));
                assert_eq!(
                    os[0].audit.get("log_level"),
                    Some(&Value::Str("info".into()))
                );
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn wildcards_principal_scope_and_reload() {
        let e = engine(
            r#"policy a { principals: ["ops"] allow: * } policy b { deny: [shutdown] }"#,
            true,
        );
        assert!(e.evaluate(&req("ops", "anything", "r")).allowed());
        assert!(!e.evaluate(&req("dev", "anything", "r")).allowed());
        assert!(!e.evaluate(&req("ops", "shutdown", "r")).allowed());
        let ids = e.ids();
        e.remove(&ids[1]).unwrap();
        assert!(e.evaluate(&req("ops", "shutdown", "r")).allowed());
        assert_eq!(
            e.remove("nope#1"),
            Err(PolicyError::UnknownPolicy("nope#1".into()))
        );
        e.reload(vec![]).unwrap();
        assert!(!e.evaluate(&req("ops", "anything", "r")).allowed());
    }

    const SET_A: &str = r#"
        policy a1 { allow: [read, list] require: { set: "A", part: 1 } }
        policy a2 { allow: read require: { set: "A", part: 2 } deny: write }
        policy a3 { deny: delete }"#;
    const SET_B: &str = r#"
        policy b1 { allow: [write, delete] require: { set: "B", part: 1 } }
        policy b2 { allow: write audit: { set: "B", part: 2 } deny: read }
        policy b3 { deny: list }"#;

    #[test]
    fn reload_is_atomic_for_concurrent_deciders() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

        const READERS: usize = 3;
        const RELOADS: usize = 500;
        let set_a = parse_policies(SET_A, "a").unwrap();
        let set_b = parse_policies(SET_B, "b").unwrap();
        let reqs: Vec<Request> = ["read", "write", "delete", "list", "other"]
            .iter()
            .map(|a| req("x", a, "r"))
            .collect();
        let batch: Vec<Result<Request>> = reqs.iter().cloned().map(Ok).collect();
        // What each whole set decides, from engines that only ever held that set.
        let exp_a = engine(SET_A, true).evaluate_batch(&batch);
        let exp_b = engine(SET_B, true).evaluate_batch(&batch);
        let exp_none = Engine::new(true).evaluate_batch(&batch);
        // Every request but `other` tells the sets (and a half-built set) apart.
        for i in 0..4 {
            assert_ne!(exp_a[i], exp_b[i]);
            assert_ne!(exp_a[i], exp_none[i]);
            assert_ne!(exp_b[i], exp_none[i]);
        }

        let e = Engine::new(true);
        e.reload(set_a.clone()).unwrap();
        let done = AtomicBool::new(false);
        let rounds = AtomicUsize::new(0);
        let seen = [AtomicUsize::new(0), AtomicUsize::new(0)];
        let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..READERS {
                s.spawn(|| {
                    // Never panics, so the writer below can always make progress.
                    while !done.load(SeqCst) {
                        let out = e.snapshot().decide_batch(&batch);
                        if out == exp_a {
                            seen[0].fetch_add(1, SeqCst);
                        } else if out == exp_b {
                            seen[1].fetch_add(1, SeqCst);
                        } else {
                            errors.lock().unwrap().push(format!("batch: {out:?}"));
                        }
                        for (i, r) in reqs.iter().enumerate() {
                            let d = e.evaluate(r);
                            if d != exp_a[i] && d != exp_b[i] {
                                errors.lock().unwrap().push(format!("request {i}: {d:?}"));
                            }
                        }
                        rounds.fetch_add(1, SeqCst);
                    }
                });
            }
            s.spawn(|| {
                for k in 0..RELOADS {
                    let next = if k % 2 == 0 { &set_b } else { &set_a };
                    e.reload(next.clone()).unwrap();
                    // At most READERS rounds were under way at the swap, so one more
                    // round began after it: every set is decided on at least once.
                    let start = rounds.load(SeqCst);
                    while rounds.load(SeqCst) <= start + READERS {
                        std::thread::yield_now();
                    }
                }
                done.store(true, SeqCst);
            });
        });
        let errors = errors.into_inner().unwrap();
        assert!(
            errors.is_empty(),
            "{} mixed decisions, first: {}",
            errors.len(),
            errors[0]
        );
        assert!(seen[0].load(SeqCst) > 0 && seen[1].load(SeqCst) > 0);
    }

    /// Policy `p{i}` allows action `a{i}` alone; a snapshot that allows some but not all
    /// of the actions saw part of one `register_all`.
    #[test]
    fn register_all_is_atomic_for_concurrent_deciders() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

        const N: usize = 64;
        const READERS: usize = 2;
        const ROUNDS: usize = 200;
        let text: String = (0..N)
            .map(|i| format!("policy p{i} {{ allow: a{i} }}\n"))
            .collect();
        let set = parse_policies(&text, "t").unwrap();
        let batch: Vec<Result<Request>> = (0..N)
            .map(|i| Ok(req("x", &format!("a{i}"), "r")))
            .collect();

        let e = Engine::new(true);
        let done = AtomicBool::new(false);
        let rounds = AtomicUsize::new(0);
        let seen = [AtomicUsize::new(0), AtomicUsize::new(0)];
        let partial: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..READERS {
                s.spawn(|| {
                    while !done.load(SeqCst) {
                        let snap = e.snapshot();
                        let allowed = snap
                            .decide_batch(&batch)
                            .iter()
                            .filter(|d| d.allowed())
                            .count();
                        match (allowed, snap.0.count) {
                            (0, 0) => _ = seen[0].fetch_add(1, SeqCst),
                            (N, N) => _ = seen[1].fetch_add(1, SeqCst),
                            other => partial.lock().unwrap().push(other),
                        }
                        rounds.fetch_add(1, SeqCst);
                    }
                });
            }
            s.spawn(|| {
                let wait = || {
                    // A round that began after the change decides on the new set.
                    let start = rounds.load(SeqCst);
                    while rounds.load(SeqCst) <= start + READERS {
                        std::thread::yield_now();
                    }
                };
                for _ in 0..ROUNDS {
                    let ids = e.register_all(set.clone()).unwrap();
                    assert_eq!(ids.len(), N);
                    wait();
                    e.reload(vec![]).unwrap();
                    wait();
                }
                done.store(true, SeqCst);
            });
        });
        let partial = partial.into_inner().unwrap();
        assert!(
            partial.is_empty(),
            "{} snapshots held part of a register_all (allowed, policies): {:?}",
            partial.len(),
            &partial[..partial.len().min(5)]
        );
        assert!(seen[0].load(SeqCst) > 0 && seen[1].load(SeqCst) > 0);
    }

    #[test]
    fn register_all_keeps_order_and_ids_continue() {
        let e = engine("policy a { allow: read }", true);
        let ids = e
            .register_all(
                parse_policies("policy b { deny: read } policy c { allow: write }", "t").unwrap(),
            )
            .unwrap();
        assert_eq!(ids, ["b#2", "c#3"]);
        assert_eq!(e.ids(), ["a#1", "b#2", "c#3"]);
        assert_eq!(e.len(), 3);
        assert!(!e.evaluate(&req("x", "read", "f")).allowed());
        assert!(e.evaluate(&req("x", "write", "f")).allowed());
        assert_eq!(e.register_all(vec![]).unwrap(), Vec::<String>::new());
        assert_eq!(
            e.register(
                parse_policies("policy d { allow: x }", "t")
                    .unwrap()
                    .remove(0)
            ),
            Ok("d#4".into())
        );
    }

    /// A write that fails after changing its copy of the registry (as a failing
    /// `register_all` would, half-way through) publishes nothing and changes nothing.
    #[test]
    fn a_failed_write_publishes_nothing() {
        let e = engine("policy a { allow: read }", true);
        let more =
            parse_policies("policy b { deny: read } policy c { allow: write }", "t").unwrap();
        let err = e.with_policies(|r| {
            Engine::append(r, more.clone());
            r.enforce = false;
            Err::<(), _>(PolicyError::UnknownPolicy("c#3".into()))
        });
        assert_eq!(err, Err(PolicyError::UnknownPolicy("c#3".into())));
        assert_eq!(e.ids(), ["a#1"]);
        assert_eq!((e.len(), e.enforce()), (1, true));
        assert!(e.evaluate(&req("x", "read", "f")).allowed());
        assert!(!e.evaluate(&req("x", "write", "f")).allowed());
        // Ids continue from the last write that took effect.
        assert_eq!(e.register_all(more).unwrap(), ["b#2", "c#3"]);
        // The next write does not publish what the failed one left behind.
        assert_eq!(e.ids(), ["a#1", "b#2", "c#3"]);
        assert!(e.enforce());
    }

    #[test]
    fn batch_matches_single() {
        let e = engine(
            r#"policy a { allow: read if resource.host in ["a", "b"] }"#,
            true,
        );
        let mut reqs = Vec::new();
        for h in ["a", "b", "c"] {
            let mut r = req("x", "read", "f");
            r.resource_attrs.insert("host".into(), Value::Str(h.into()));
            reqs.push(Ok(r));
        }
        reqs.push(Err(PolicyError::BadRequest {
            field: "principal".into(),
            message: "bad".into(),
        }));
        let out = e.evaluate_batch(&reqs);
        for (r, d) in reqs.iter().zip(&out) {
            if let Ok(r) = r {
                assert_eq!(&e.evaluate(r), d);
            } else {
                assert!(!d.allowed());
            }
        }
    }
}
