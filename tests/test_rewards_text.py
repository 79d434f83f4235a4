"""Verdicts of the text scorers (JSON validity, exact answer, format, length, overlong) and of the
weighted composition on tricky inputs."""
from __future__ import annotations

import time

import pytest

from rewards import Item, Result, WeightedScorer, make_scorer
from rewards.length import length_band, overlong_penalty


def one(scorer, completion, reference=None, prompt="p"):
    return scorer.score([Item(prompt, completion, reference)])[0]


# ---- json_valid -------------------------------------------------------------------------------
@pytest.mark.parametrize("text,valid", [
    ('{"answer": 7}', True),
    ("  [1, 2, 3]\n", True),
    ('"just a string"', True),
    ("1e400", True),                     # valid JSON syntax, even if it overflows a double
    ("9" * 5000, True),                  # longer than CPython's int-conversion limit, still JSON
    ("", False),
    ("{'a': 1}", False),                 # single quotes
    ('{"a": 1,}', False),                # trailing comma
    ('{"a": 1} {"b": 2}', False),        # two texts
    ('{"a": NaN}', False),
    ('[Infinity]', False),
    ('[-Infinity]', False),
    ('{"a": 1, "a": 2}', False),         # duplicate keys
    ('{"x": {"a": 1, "a": 1}}', False),  # nested duplicate
    ('"tab\there"', False),              # raw control character in a string
    ("\ufeff{}", False),                 # byte-order mark
    ("[" * 100_000 + "]" * 100_000, False),  # far too deep: a verdict, not a RecursionError
])
def test_json_valid_strict_verdicts(text, valid):
    r = one(make_scorer("json_valid"), text)
    assert r.status == "ok" and r.score == (1.0 if valid else 0.0), r
    if not valid:
        assert r.details["reason"]


def test_json_valid_options_change_the_verdict():
    lenient = make_scorer("json_valid", allow_nan=True, allow_duplicate_keys=True)
    assert one(lenient, '{"a": NaN, "a": Infinity}').score == 1.0
    assert one(make_scorer("json_valid", max_depth=3), "[[[[1]]]]").score == 0.0
    assert one(make_scorer("json_valid", max_depth=4), "[[[[1]]]]").score == 1.0
    obj = make_scorer("json_valid", require="object")
    assert one(obj, "[1]").score == 0.0 and one(obj, "{}").score == 1.0
    fenced = make_scorer("json_valid", fenced=True)
    text = 'Here you go:\n```json\n{"a": 1}\n```\nand ```json\nnot json\n```'
    assert one(fenced, text).score == 1.0
    assert one(make_scorer("json_valid"), text).score == 0.0
    assert one(make_scorer("json_valid", max_chars=10), '{"a": "0123456789"}').score == 0.0
    with pytest.raises(ValueError, match="require"):
        make_scorer("json_valid", require="number")


def test_json_valid_non_string_completion_is_an_error_not_a_crash():
    r = make_scorer("json_valid").score([Item("p", None), Item("p", "{}")])
    assert r[0].status == "error" and r[0].score is None and r[1].score == 1.0


# ---- exact_answer ------------------------------------------------------------------------------
@pytest.mark.parametrize("completion,reference,score", [
    ('{"answer": 7}', 7, 1.0),            # the GRPO demo task
    ('{"answer": 8}', 7, 0.0),
    ('{"answer": "7"}', 7, 1.0),
    ('{"answer": 7.0}', 7, 1.0),
    ('{"answer": 7.0000000001}', 7, 1.0),  # inside the relative tolerance
    ('{"answer": 7.01}', 7, 0.0),
    ('I think {"answer": 12} is right', 12, 1.0),
    ('{"answer": 3} no wait, {"answer": 4}', 4, 1.0),  # the last one counts
    ('{"result": {"answer": 5}}', 5, 1.0),
    ('{"answer": true}', "True", 1.0),
    ('{"answer": NaN}', 7, 0.0),
    ("so the result is \\boxed{42}.", 42, 1.0),
    ("\\boxed{\\frac{1}{2}}", 0.5, 1.0),
    ("\\boxed{x^{2}+1}", "x^{2}+1", 1.0),  # nested braces
    ("first \\boxed{3} then \\boxed{4}", 4, 1.0),  # the last one counts
    ("Answer: Paris.", "paris", 1.0),
    ("The answer is 1,000 apples", 1000, 1.0),
    ("answer = -3/4", -0.75, 1.0),
    ("2 + 3 = 5", 5, 1.0),                 # last number
    ("2 + 3 = 5", "6", 0.0),
    ("Answer: 5", ["five", 5], 1.0),       # a list of acceptable answers
])
def test_exact_answer_verdicts(completion, reference, score):
    r = one(make_scorer("exact_answer"), completion, reference)
    assert r.status == "ok" and r.score == score, r


def test_exact_answer_missing_answer_and_missing_reference():
    r = one(make_scorer("exact_answer"), "I do not know.", 7)
    assert (r.score, r.status) == (0.0, "ok") and "no answer" in r.details["reason"]
    r = one(make_scorer("exact_answer"), '{"answer": 7}', None)
    assert r.score is None and r.status == "error"
    r = one(make_scorer("exact_answer", rel_tol=0.1), '{"answer": 7.5}', 7)
    assert r.score == 1.0


# ---- format, length, overlong ------------------------------------------------------------------
def test_format_think_answer_tags():
    s = make_scorer("format")
    assert one(s, "<think>a\nb</think> <answer>7</answer>").score == 1.0
    assert one(s, "<answer>7</answer>").score == 0.0
    assert one(s, "<think>a</think><answer>7</answer> trailing").score == 0.0
    assert one(make_scorer("format", pattern=r"\{.*\}"), '{"answer": 7}').score == 1.0
    assert one(s, "<think>a</think>b</think><answer>7</answer>").score == 0.0  # one think block only
    with pytest.raises(ValueError, match="regular expression"):
        make_scorer("format", pattern="(")
    r = one(make_scorer("format", pattern="(a|aa)+", time_limit_s=0.2), "a" * 40 + "!")
    assert (r.score, r.status) == (None, "timeout")  # an operator's backtracking pattern is cut off


# Hostile completions near the size limit: each must get its verdict promptly (a lazy regex or a decode
# attempt at every "{" made some of these take 10-15 s before).
HOSTILE_TEXT = ['{"a":' * 20000, "{" * 100000, '{"answer": ' * 10000, "\\boxed{" * 30000, "answer: " * 20000,
                "<think>" + "</think><answer>" * 5000, "<think></think><answer>" + "</answer>x" * 20000]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("text", HOSTILE_TEXT, ids=range(len(HOSTILE_TEXT)))
def test_hostile_text_gets_a_verdict(text):
    for name in ("exact_answer", "format", "json_valid"):
        r = one(make_scorer(name), text, 7)
        assert r.status == "ok" and r.score == 0.0, (name, r.details)


def test_overlong_penalty_follows_dapo_piecewise_formula():
    # L_max = 10, L_cache = 4: free up to 6, linear to -1 at 10, -1 beyond.
    assert [overlong_penalty(n, 10, 4) for n in (0, 6, 7, 8, 10, 11, 100)] == [0, 0, -0.25, -0.5, -1, -1, -1]
    s = make_scorer("overlong", max_len=10, cache_len=4, unit="words")
    assert one(s, "a b c d e f g h").score == -0.5 and one(s, "a b c d e f g h").details["length"] == 8
    with pytest.raises(ValueError, match="cache_len"):
        make_scorer("overlong", max_len=4, cache_len=10)


def test_length_band_and_token_unit(tiny_model_dir):
    assert [length_band(n, 5, 10, 5) for n in (0, 3, 5, 10, 12, 15, 20)] == [0, 0.6, 1, 1, 0.6, 0, 0]
    assert length_band(11, 5, 10, 0) == 0.0
    s = make_scorer("length", min_len=1, max_len=3, unit="tokens", tokenizer=str(tiny_model_dir))
    r = one(s, "hi")
    assert r.details["unit"] == "tokens" and r.details["length"] >= 1
    with pytest.raises(ValueError, match="tokenizer"):
        make_scorer("length", unit="tokens")


# ---- registry and composition ------------------------------------------------------------------
def test_unknown_scorer_and_bad_options_name_what_to_change():
    with pytest.raises(ValueError, match="unknown scorer 'nope'.*json_valid"):
        make_scorer("nope")
    with pytest.raises(ValueError, match="bad options for scorer 'json_valid'"):
        make_scorer("json_valid", no_such_option=1)


def test_weighted_sum_and_per_component_statuses():
    w = WeightedScorer({"json_valid": 0.2, "exact_answer": 1.0})
    rs = w.score([Item("1+6=?", '{"answer": 7}', 7), Item("1+6=?", '{"answer": 8}', 7),
                  Item("1+6=?", "seven", 7)])
    assert [r.score for r in rs] == pytest.approx([1.2, 0.2, 0.0])
    assert all(r.status == "ok" for r in rs)
    assert rs[0].details["scores"] == {"json_valid": 1.0, "exact_answer": 1.0}
    assert rs[2].details["statuses"] == {"json_valid": "ok", "exact_answer": "ok"}


class _Boom:
    name = "boom"

    def score(self, items):
        raise RuntimeError("kaput")


class _Slow:
    name = "slow"

    def score(self, items):
        time.sleep(30)
        return [Result(1.0, "ok") for _ in items]


class _Liar:
    name = "liar"

    def score(self, items):
        return [Result(float("nan"), "ok")]  # NaN, and one result for any batch size


@pytest.mark.parametrize("bad,status", [(_Boom(), "error"), (_Slow(), "timeout"), (_Liar(), "error")])
def test_one_failing_component_never_kills_the_batch(bad, status):
    w = WeightedScorer({"exact_answer": 1.0, "x": 0.5}, {"x": {"scorer": "json_valid"}}, timeout_s=0.5)
    w.components["x"] = bad  # a misbehaving plugin
    rs = w.score([Item("p", '{"answer": 7}', 7), Item("p", "no", 7)])
    assert [r.score for r in rs] == [1.0, 0.0]
    assert [r.status for r in rs] == ["ok", "ok"]
    assert rs[0].details["statuses"]["x"] == status and rs[0].details["scores"]["x"] is None
    # every component failing is the one case where the item's status is not ok
    w.components["exact_answer"] = bad
    rs = w.score([Item("p", '{"answer": 7}', 7)])
    assert rs[0].status == status and rs[0].score == 0.0


def test_weighted_scorer_config_errors():
    with pytest.raises(ValueError, match="empty"):
        WeightedScorer({})
    with pytest.raises(ValueError, match="not among the weighted"):
        WeightedScorer({"json_valid": 1.0}, {"exact_answer": {}})
    with pytest.raises(ValueError, match="weight of scorer"):
        WeightedScorer({"json_valid": "heavy"})


# ---- json_schema -------------------------------------------------------------------------------------------
ANSWER_SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
                 "additionalProperties": False}


@pytest.mark.parametrize("completion,schema,score", [
    ('{"answer": 7}', ANSWER_SCHEMA, 1.0),
    ('{"answer": "7"}', ANSWER_SCHEMA, 0.0),
    ('{"answer": 7, "why": "x"}', ANSWER_SCHEMA, 0.0),
    ("{}", ANSWER_SCHEMA, 0.0),
    ('{"answer": NaN}', ANSWER_SCHEMA, 0.0),            # not strict JSON: no validation at all
    ('{"answer": 1, "answer": 2}', ANSWER_SCHEMA, 0.0),
    ('{"answer": 7}', '{"type": "object"}', 1.0),     # schema given as JSON text
    ("[1, 1.0]", {"uniqueItems": True}, 0.0),          # 1 == 1.0 in JSON Schema
    ("[1, true]", {"uniqueItems": True}, 1.0),         # but true != 1
    ('[{"a": 1, "b": 2}, {"b": 2, "a": 1}]', {"uniqueItems": True}, 0.0),
    ('"2024-13-45"', {"type": "string", "pattern": "^\\d{4}-\\d{2}-\\d{2}$"}, 1.0),
    ("5", {"$defs": {"pos": {"minimum": 0}}, "$ref": "#/$defs/pos"}, 1.0),
    ("-5", {"$defs": {"pos": {"minimum": 0}}, "$ref": "#/$defs/pos"}, 0.0),
    ("1", True, 1.0),                                  # boolean schema
])
def test_json_schema_verdicts(completion, schema, score):
    r = one(make_scorer("json_schema"), completion, schema)
    assert (r.score, r.status) == (score, "ok"), r
    if score == 0.0:
        assert r.details.get("errors") or r.details.get("reason")


def test_json_schema_large_unique_array_is_linear():
    items = "[" + ",".join('{"k": %d, "v": [%d, "x"]}' % (i, i) for i in range(5000)) + "]"
    r = one(make_scorer("json_schema", time_limit_s=5.0, max_instance_chars=200_000), items,
            {"type": "array", "uniqueItems": True})
    assert (r.score, r.status) == (1.0, "ok")


@pytest.mark.parametrize("schema,reason", [
    ({"type": "nonsense"}, "invalid schema"),
    ("{not json", "not JSON"),
    (["a"], "object or boolean"),
    (None, "object or boolean"),
    ({"enum": ["x" * 200_000]}, "max_schema_chars"),
])
def test_json_schema_unusable_schema_is_an_error_not_a_verdict(schema, reason):
    r = one(make_scorer("json_schema"), "{}", schema)
    assert r.score is None and r.status == "error" and reason in r.details["reason"]


def test_json_schema_never_fetches_remote_refs():
    import http.server
    import threading

    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"type": "integer"}')

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{srv.server_port}/schema.json"
        for schema in ({"$ref": url}, {"properties": {"a": {"$ref": url}}}):
            r = one(make_scorer("json_schema"), '{"a": 1}', schema)
            assert (r.score, r.status) == (None, "error") and "never fetched" in r.details["reason"]
        one(make_scorer("json_schema"), '{"a": 1}', {"$schema": url, "type": "object"})  # unknown dialect
        assert hits == []
    finally:
        srv.shutdown()


@pytest.mark.parametrize("schema,instance", [
    ({"type": "string", "pattern": "^(a|aa)+$"}, '"' + "a" * 40 + '!"'),            # catastrophic backtracking
    ({"patternProperties": {"^(a|aa)+$": {}}}, '{"' + "a" * 40 + '!": 1}'),
    ({"$defs": {**{f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]}
                   for i in range(40)}, "d40": {"type": "string"}}, "$ref": "#/$defs/d0"}, "1"),  # 2^40 paths
])
def test_json_schema_pathological_inputs_time_out(schema, instance):
    r = one(make_scorer("json_schema", time_limit_s=0.3), instance, schema)
    assert r.status == "timeout" and r.score is None


def test_json_schema_bounds_instance_depth_and_size():
    s = make_scorer("json_schema", max_depth=5, max_instance_chars=50)
    assert one(s, "[[[[[[1]]]]]]", {}).score == 0.0
    assert one(s, '"' + "x" * 60 + '"', {}).score == 0.0
    assert one(s, "[[1]]", {}).score == 1.0
