from __future__ import annotations

import inspect

import pytest

import symbi
from symbi import errors
from symbi.audit import chain_hashes, chain_link, verify_chain


def test_every_error_is_a_symbi_error():
    classes = [getattr(errors, n) for n in errors.__all__]
    assert len(classes) >= 15
    for cls in classes:
        assert inspect.isclass(cls) and issubclass(cls, errors.SymbiError), cls


def test_errors_carry_context_attributes():
    e = errors.AuditIntegrityError("broken", sequence=7, kind="link")
    assert (e.sequence, e.kind, str(e)) == (7, "link", "broken")
    d = errors.PolicyDenied("no", decision="deny", request={"action": "x"})
    assert d.request == {"action": "x"}
    t = errors.RequestTimeout("slow", recipient="a", timeout=1.5)
    assert isinstance(t, TimeoutError) and t.timeout == 1.5
    assert isinstance(errors.InvalidArgument("bad", argument="x", expected="int"), ValueError)


def test_rust_errors_arrive_as_symbi_errors_with_attributes():
    with pytest.raises(errors.InvalidArgument) as ei:
        chain_link(b"short", 0, b"payload")
    e = ei.value
    assert e.argument == "prev"
    assert e.got == 5
    assert "32" in e.expected
    assert "first event" in str(e)  # the message says what to do


def test_rust_length_mismatch_is_typed():
    with pytest.raises(symbi.SymbiError) as ei:
        verify_chain(bytes(32), 0, [b"a", b"b"], [bytes(32)])
    assert isinstance(ei.value, errors.InvalidArgument)
    assert ei.value.argument == "hashes"


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: chain_hashes(bytes(32), -1, [b"a"]), "first_seq"),
        (lambda: chain_hashes(bytes(32), 2**64, [b"a"]), "first_seq"),
        (lambda: chain_hashes(bytes(32), 0, b"abc"), "payloads"),
        (lambda: chain_hashes(bytes(32), 0, ["text"]), "payloads[0]"),
        (lambda: chain_link(bytes(32), 0, "text"), "payload"),  # type: ignore[arg-type]
        (lambda: chain_hashes(bytes(32), 2**64 - 1, [b"a", b"b"]), "first_seq"),
        (lambda: symbi.Housekeeper(0), "interval_s"),
        (lambda: symbi.Housekeeper(float("nan")), "interval_s"),
        (lambda: symbi.Housekeeper("5"), "interval_s"),  # type: ignore[arg-type]
        (lambda: symbi.parse_size(None), "size"),  # type: ignore[arg-type]
        (lambda: symbi.parse_size("12 furlongs"), "size"),
        (lambda: symbi.parse_size(-1), "size"),
    ],
)
def test_bad_input_to_public_functions_is_invalid_argument(call, argument):
    with pytest.raises(errors.InvalidArgument) as ei:
        call()
    assert ei.value.argument == argument
