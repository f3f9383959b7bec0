"""Multiple-choice scoring against a bigram "model" computed by hand, the CausalLM plug-in
against full softmax, and the next-line task built from real files."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax

from reliscale.evaluation import metrics as M
from reliscale.evaluation.choices import (
    causal_lm_logprob_fn,
    choice_metrics,
    score_choices,
)
from reliscale.tasks.next_line import (
    build_next_line_task,
    read_choice_task,
    stdlib_sources,
    write_jsonl,
)

ALPHABET = "abcdefgh é"  # 'é' is 1 character but 2 UTF-8 bytes


def encode(text: str) -> list[int]:
    return [ALPHABET.index(c) for c in text]


def bigram_fn(table: np.ndarray, seen: list | None = None):
    """log p(next | previous) from a [V, V] table of log-probabilities."""
    logp = torch.as_tensor(table)

    def fn(tokens: torch.Tensor) -> torch.Tensor:
        if seen is not None:
            seen.append(tokens.clone())
        return logp[tokens[:, :-1], tokens[:, 1:]]

    return fn


def random_items(n: int, n_choices: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)

    def word(lo, hi):
        return "".join(rng.choice(list(ALPHABET), size=rng.integers(lo, hi)))

    return [{"context": word(1, 8), "choices": [word(1, 6) for _ in range(n_choices)],
             "label": int(rng.integers(n_choices))} for _ in range(n)]


def bigram_ll(table, context, choice):
    """Σ log p over the choice's characters, each given the character before it."""
    text = context + choice
    start = len(context)
    return sum(table[encode(text[k - 1])[0], encode(text[k])[0]] for k in range(start, len(text)))


@pytest.fixture(scope="module")
def bigram():
    rng = np.random.default_rng(0)
    return log_softmax(2.0 * rng.normal(size=(len(ALPHABET), len(ALPHABET))), axis=1)


def test_choice_lls_match_a_hand_computed_bigram(bigram):
    items = random_items(25, 4, seed=1)
    lls = score_choices(bigram_fn(bigram), encode, items, max_len=64, batch_size=7)
    for item, ll in zip(items, lls, strict=True):
        expected = [bigram_ll(bigram, item["context"], c) for c in item["choices"]]
        np.testing.assert_allclose(ll, expected, rtol=1e-12)


def test_choice_metrics_match_a_direct_numpy_computation(bigram):
    items = random_items(60, 4, seed=2)
    lls = score_choices(bigram_fn(bigram), encode, items, max_len=64)
    got = choice_metrics(items, lls)
    ll = np.array([[bigram_ll(bigram, it["context"], c) for c in it["choices"]] for it in items])
    labels = np.array([it["label"] for it in items])
    chars = np.array([[len(c) for c in it["choices"]] for it in items])
    gold = [it["choices"][it["label"]] for it in items]
    gold_bytes = np.array([len(c.encode("utf-8")) for c in gold])
    assert any(len(c) != len(c.encode("utf-8")) for c in gold)  # bytes and characters differ
    probs = softmax(ll, axis=1)
    assert got["accuracy"] == pytest.approx(np.mean(ll.argmax(1) == labels))
    assert got["accuracy_len_norm"] == pytest.approx(np.mean((ll / chars).argmax(1) == labels))
    assert got["accuracy"] != got["accuracy_len_norm"]
    assert got["bpb"] == pytest.approx(np.mean(-ll[np.arange(60), labels] / gold_bytes) / math.log(2))
    assert got["ece"] == pytest.approx(M.ece(probs, labels), abs=1e-12)
    assert got["brier"] == pytest.approx(M.brier(probs, labels), abs=1e-12)


def test_continuation_slice_includes_the_last_context_token_and_stops_at_its_own_end():
    # p(b|a)=.9, p(c|a)=.1, p(z|b)=.1, p(z|c)=.5: "bz" wins (.09 vs .05) only if the
    # transition from the context's last token is scored; dropping it would pick "cz".
    abc = "abcz"
    table = np.full((4, 4), np.log(0.25))
    table[0, 1], table[0, 2] = np.log(0.9), np.log(0.1)
    table[1, 3], table[2, 3] = np.log(0.1), np.log(0.5)
    items = [{"context": "za", "choices": ["bz", "cz"], "label": 0},
             {"context": "a", "choices": ["c", "bzzz"], "label": 0}]
    lls = score_choices(bigram_fn(table), lambda s: [abc.index(c) for c in s], items, max_len=8)
    np.testing.assert_allclose(lls[0], np.log([0.09, 0.05]))
    # "c" is padded in a batch with a longer choice; its ll must stop at its last token
    np.testing.assert_allclose(lls[1], [np.log(0.1), np.log(0.9 * 0.1 * 0.25**2)])
    assert choice_metrics(items[:1], lls[:1])["accuracy"] == 1.0


def test_long_contexts_are_left_truncated_to_max_len(bigram):
    items = [{"context": "abcdefgh" * 4, "choices": ["hé", "abcde"], "label": 1}]
    seen: list = []
    short = score_choices(bigram_fn(bigram, seen), encode, items, max_len=6)
    full = score_choices(bigram_fn(bigram), encode, items, max_len=100)
    np.testing.assert_allclose(short[0], full[0])  # a bigram needs only the last context token
    tokens = seen[0]
    assert tokens.shape[1] - 1 == 6  # the model's input is at most max_len tokens
    assert tokens[1].tolist() == encode(("abcdefgh" * 4 + "abcde")[-7:])
    assert tokens[0].tolist() == encode(("abcdefgh" * 4 + "hé")[-7:])


def test_bad_items_and_model_outputs_are_reported(bigram):
    fn = bigram_fn(bigram)
    with pytest.raises(ValueError, match="item 0: the context encodes to no tokens"):
        score_choices(fn, encode, [{"context": "", "choices": ["a", "b"], "label": 0}], 8)
    with pytest.raises(ValueError, match="item 0 choice 1: the continuation has 5 tokens"):
        score_choices(fn, encode, [{"context": "a", "choices": ["a", "bbbbb"], "label": 0}], 4)
    with pytest.raises(ValueError, match=r"item 0: 2 choices but lls of shape \(3,\)"):
        choice_metrics([{"context": "a", "choices": ["a", "b"], "label": 0}], [np.zeros(3)])
    with pytest.raises(ValueError, match=r"logprob_fn must return shape \(2, 2\)"):
        score_choices(lambda t: torch.zeros(2, 3), encode,
                      [{"context": "a", "choices": ["ab", "b"], "label": 0}], 8)


def test_causal_lm_logprobs_match_full_log_softmax_and_ignore_right_padding():
    from reliscale.models.build import CausalLM
    from reliscale.spec.ladder import Shape

    torch.manual_seed(0)
    model = CausalLM(Shape(16, 1, 2), vocab_size=23, seq_len=32).eval()
    tokens = torch.randint(0, 23, (3, 12))
    fn = causal_lm_logprob_fn(model, vocab_chunk=5)
    with torch.no_grad():
        full = log_softmax(model.logits({"tokens": tokens}).double().numpy(), axis=-1)
    expected = np.take_along_axis(full, tokens[:, 1:, None].numpy(), -1)[..., 0]
    np.testing.assert_allclose(fn(tokens).numpy(), expected, atol=1e-5)
    items = [{"context": "ab", "choices": ["c", "dé ", "hhhh"], "label": 2},
             {"context": "é", "choices": ["aaaaaaa", "b"], "label": 1}]
    one = score_choices(fn, encode, items, max_len=16, batch_size=1)
    batched = score_choices(fn, encode, items, max_len=16, batch_size=5)
    for a, b in zip(one, batched, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


# --- next-line task --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two small files of distinct numbered lines (and blank lines to skip)."""
    root = tmp_path_factory.mktemp("corpus")
    for name in ("a.txt", "b.txt"):
        rows = [f"{name} line {k}" + ("\n" if k % 5 else "\n\n   \n") for k in range(40)]
        (root / name).write_text("".join(rows), encoding="utf-8")
    return [root / "b.txt", root / "a.txt"]


def test_next_line_task_is_deterministic_and_independent_of_file_order(corpus):
    a = build_next_line_task(corpus, 30, seed=3)
    assert a == build_next_line_task(corpus[::-1], 30, seed=3)
    assert a != build_next_line_task(corpus, 30, seed=4)


def test_next_line_label_points_at_the_true_next_line(corpus):
    items = build_next_line_task(corpus, 60, n_choices=5, context_lines=2, seed=0)
    labels = [it["label"] for it in items]
    assert set(labels) == set(range(5))  # the true line's position is shuffled
    for it in items:
        name, k = it["context"].splitlines()[-1].rsplit(" line ", 1)
        assert it["choices"][it["label"]] == f"{name} line {int(k) + 1}"
        assert len(it["context"].splitlines()) == 2 and it["context"].endswith("\n")
        assert len({c.strip() for c in it["choices"]}) == 5
        assert not set(it["context"].splitlines()) & set(it["choices"])


def test_next_line_task_from_the_standard_library_round_trips_through_jsonl(tmp_path):
    files = stdlib_sources()
    assert len(files) > 50
    items = build_next_line_task(files[:20], 50, seed=0)
    write_jsonl(items, tmp_path / "task.jsonl")
    assert read_choice_task(tmp_path / "task.jsonl") == items


def test_too_small_corpus_is_rejected(tmp_path):
    (tmp_path / "x.txt").write_text("one\ntwo\nthree\nfour\n", encoding="utf-8")
    with pytest.raises(ValueError, match="n_items=5 asks for more"):
        build_next_line_task([tmp_path / "x.txt"], 5, context_lines=3)
    with pytest.raises(ValueError, match="too few distinct distractor lines"):
        build_next_line_task([tmp_path / "x.txt"], 1, n_choices=4, context_lines=3)


@pytest.mark.parametrize("record,why", [
    ("not json", "line 2: not valid JSON"),
    ('{"choices": ["a", "b"], "label": 0}', "line 2: missing key 'context'"),
    ('{"context": "x", "choices": ["a"], "label": 0}', "line 2: 'choices' must be a list of at"),
    ('{"context": "x", "choices": ["a", ""], "label": 0}', "line 2: 'choices' must be non-empty"),
    ('{"context": "x", "choices": ["a", "b"], "label": 2}', r"line 2: 'label' 2 is out of range"),
    ('{"context": "x", "choices": ["a", "b"], "label": true}', "line 2: 'label' must be an int"),
    ('[1, 2]', "line 2: expected an object, got list"),
])
def test_read_choice_task_names_file_line_and_problem(tmp_path, record, why):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"context": "x", "choices": ["a", "b"], "label": 1})
    path.write_text(f"{good}\n{record}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"bad.jsonl {why}"):
        read_choice_task(path)
