"""Mutated examples fed to ``vmemcore run``: every outcome is an exit code of 0, 1 or 2 with at most
a one-line error, never a traceback. ``main`` runs in-process with no catch-all around it, so an
exception it does not convert fails the test (and names the bug)."""

import json
import tomllib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmemcore.cli import main

from scenario_helpers import EXAMPLES

# the small examples: each boots in well under a second
SOURCES = {path.name: path.read_text() for path in sorted(EXAMPLES.glob("*.toml"))
           if not any(big in path.name for big in ("64T", "1P", "1T"))}

SCALARS = st.one_of(
    st.sampled_from([0, 1, -1, 3, 512, 2**31, 2**63 - 1, -(2**63), 10**12]),
    st.sampled_from(["16G", "2M", "1G", "0", "-1G", "4P", "9999999E", "0x1000", "x86_64", "arm64", "6.12",
                     "7.1", "normal", "movable", "Y", "force", "", "16 G"]),
    st.sampled_from([True, False, 1.5, 6.1, float("inf")]),
    st.text(max_size=8),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.sampled_from(["size", "count", "node", "x"]),
                                                                      inner, max_size=2)), max_leaves=6)


def toml_value(value) -> str:
    """A TOML inline value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "inf" if value == float("inf") else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return "{" + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + "}"


def toml_text(doc) -> str:
    """A TOML document: tables and arrays of tables as headers, everything else inline."""
    lines = [f'"{k}" = {toml_value(v)}' for k, v in doc.items()
             if not isinstance(v, dict) and not (isinstance(v, list) and v and all(isinstance(i, dict) for i in v))]
    for key, value in doc.items():
        if isinstance(value, dict):
            lines += [f'["{key}"]'] + [f'"{k}" = {toml_value(v)}' for k, v in value.items()]
        elif isinstance(value, list) and value and all(isinstance(i, dict) for i in value):
            for item in value:
                lines += [f'[["{key}"]]'] + [f'"{k}" = {toml_value(v)}' for k, v in item.items()]
    return "\n".join(lines) + "\n"


def paths(doc, prefix=()):
    """Every (container, key) of the document, tables and arrays alike."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    for key, value in items:
        yield doc, key
        if isinstance(value, (dict, list)):
            yield from paths(value, prefix + (key,))


@st.composite
def mutated(draw):
    """An example's text after one or two mutations of its keys, values, nesting or syntax."""
    name = draw(st.sampled_from(sorted(SOURCES)))
    text = SOURCES[name]
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["value", "magnitude", "scale", "scale", "delete", "key", "nest", "syntax"]))
        if kind == "syntax":
            cut = draw(st.integers(0, len(text)))
            text = text[:cut] + draw(st.sampled_from(["[", "]", "=", '"', "{", "\n[[steps]]\n", "\x00", "é", "#"])) + text[cut:]
            continue
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            continue
        spots = list(paths(doc))
        if kind == "scale":  # a number or size of the same type: the scenario stays valid more often
            spots = [(c, k) for c, k in spots if isinstance(c[k], int) and not isinstance(c[k], bool)
                     or isinstance(c[k], str) and c[k][:1].isdigit()] or spots
        container, key = draw(st.sampled_from(spots))
        if kind == "scale":
            container[key] = draw(st.sampled_from([0, 1, 7, 4096, 10**6, 2**40, 2**63 - 1]) if isinstance(container[key], int)
                                  else st.sampled_from(["0", "4K", "2M", "1G", "3G", "64G", "1T", "64T", "1P", "16E"]))
        elif kind == "value":
            container[key] = draw(VALUES)
        elif kind == "magnitude":
            container[key] = draw(st.sampled_from([2**63 - 1, -1, 0, 10**15, "16E", "1P", "4096P", "0x7fffffffffffffff"]))
        elif kind == "delete":
            del container[key]
        elif kind == "key" and isinstance(container, dict):
            container[draw(st.sampled_from(["sise", "count", "node", "op", "extra", "block", "zone"]))] = container[key]
        elif kind == "nest":
            value = container[key]
            for _ in range(draw(st.sampled_from([1, 5, 40]))):
                value = [value]
            container[key] = value
        text = toml_text(doc)
    return name, text


# derandomize: the same 200 cases on every run, so that CI cannot draw a case a local run never saw
@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=mutated())
def test_mutated_examples_exit_0_1_or_2_without_a_traceback(case, tmp_path_factory, capsys):
    name, text = case
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    code = main(["run", str(path)])
    err = capsys.readouterr().err
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in err
    if code:
        assert err.startswith("vmemcore: error: "), err
        assert str(path) in err or code == 1, err


@pytest.mark.parametrize("depth", [500, 5000])
def test_deep_nesting_is_a_syntax_error(tmp_path, capsys, depth):
    """tomllib parses nested arrays recursively: 500 levels raised RecursionError."""
    path = tmp_path / "deep.toml"
    path.write_text(SOURCES["x86_64-16G.toml"] + "x = " + "[" * depth + "]" * depth + "\n")
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err == f"vmemcore: error: {path}: syntax: values nested too deeply\n"


def test_a_deeply_nested_value_is_shown_cut_short(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text('[machine]\narch = "x86_64"\nfeatures = { pse = ' + "[" * 300 + "]" * 300 + ' }\n[[memory]]\nsize = "1G"\n')
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err == f"vmemcore: error: {path}:3: machine.features.pse: must be true or false, got array [[[[...]]]]\n"
