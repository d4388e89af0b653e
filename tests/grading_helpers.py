"""Building submissions for the grading tests: a learner's notebook is the released notebook with some
answer cells filled in. Also the table of misconceptions and the table of bad inputs."""

from __future__ import annotations

import copy
import csv
import json
import textwrap
from pathlib import Path

import nbformat

from qkv_grading.course import ASSIGNMENTS, read_notebook, release_path, source_path

ROOT = Path(__file__).resolve().parents[1]


def _gid(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def solution_sources(name: str) -> dict[str, str]:
    """grade_id -> the answer cell as a learner would write it (the solution without nbgrader's markers)."""
    out = {}
    for cell in read_notebook(source_path(ROOT, name)).cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            lines = [ln for ln in cell.source.splitlines() if "### BEGIN SOLUTION" not in ln and "### END SOLUTION" not in ln]
            out[_gid(cell)] = "\n".join(lines)
    return out


def filled(name: str, answers: dict[str, str] | None = None, blank: bool = False) -> nbformat.NotebookNode:
    """The released notebook with every answer cell filled with the solution (unless ``blank``), then the
    cells named in ``answers`` replaced by their text."""
    nb = read_notebook(release_path(ROOT, name))
    sol = {} if blank else solution_sources(name)
    for cell in nb.cells:
        gid = _gid(cell)
        if gid in sol:
            cell.source = sol[gid]
        if answers and gid in answers:
            cell.source = textwrap.dedent(answers[gid]).strip("\n")
    return nb


def write_nb(nb, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nbformat.writes(nb) if not isinstance(nb, (str, bytes)) else nb)
    return path


def submit(base: Path, student: str, name: str, nb) -> Path:
    return write_nb(nb, base / student / name / f"{name}.ipynb")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def question_scores(out: Path) -> dict[tuple[str, str], dict[str, tuple[float, float]]]:
    table: dict = {}
    for row in read_csv(out / "questions.csv"):
        table.setdefault((row["student"], row["assignment"]), {})[row["question"]] = (
            float(row["score"]), float(row["max_score"]))
    return table


# ---- plausible wrong answers: (assignment, question, label, {answer cell: its text}) --------------------
# Each must score less than full on its question and full on every other one. A label with "library" in it
# marks a call to the course library's own version of what the question asks for (scored 0 by policy).

_Q1 = "values = np.array([[2.0, 10.0], [4.0, 0.0], [8.0, 5.0]])\nweights = np.array([0.2, 0.7, 0.1])\n"
_CACHE_BYTES = """
        def kv_cache_bytes(kind, i, n_layer, tau, head_dim, bytes_per_number, batch=1, groups=None):
            heads = {heads}
            return {factor} * n_layer * heads * i * head_dim * bytes_per_number * batch"""
_KV_COUNTS = """
        def kv_projections(i, tau, use_cache):
            return {body}
        def total_kv_projections(n, tau, use_cache):
            return sum(kv_projections(i, tau, use_cache) for i in range(1, n + 1))"""

_CHECK = "np.any(weights < 0) or not np.isclose(weights.sum(), 1.0)"
_SOLVE = "np.linalg.solve(np.vstack([values.T, np.ones(len(values))]), np.append(output, 1.0))"
_EX1_Q2 = """
        def weighted_average(values, weights):
            values, weights = np.asarray(values, dtype=float), np.asarray(weights, dtype=float)
            if {check}:
                raise ValueError("not attention weights")
            return weights @ values
        def weights_for(values, output):
            values, output = np.asarray(values, dtype=float), np.asarray(output, dtype=float)
            return {solve}
        def attention_can_output(values, output):
            values, output = np.asarray(values, dtype=float), np.asarray(output, dtype=float)
            w = weights_for(values, output)
            return bool({reach})"""
_GQA = """
        from qkv.reference import attention
        def kv_head(h, tau, g):
            return {head}
        def grouped_attention(q, k, v):
            tau, g = q.shape[0], k.shape[0]
            rows = [kv_head(h, tau, g) - 1 for h in range(1, tau + 1)]
            return attention(q, k[rows], v[rows])
        def cache_numbers(W_q, W_k, tau, n_layer, i):
            head_dim = W_q.shape[1] // {width}
            kv = W_k.shape[1] // head_dim
            return 2 * n_layer * {heads} * head_dim * i if "{heads}" != "g" else 2 * n_layer * kv * head_dim * i"""
_ZEROED = """
        def zeroed_value_experiment(Q, K, V, positions):
            V_zeroed = np.array(V, dtype=float)
            V_zeroed[{rows}] = 0.0
            return {weights}, attention(Q, K, V_zeroed)"""

_ROPE = """
        from qkv.reference import rope
        def relative_score(q, k, offset):
            q, k = np.asarray(q, dtype=float), np.asarray(k, dtype=float)
            return float({score})
        def rotated_with(slot, m, s):
            return {slot}
        rotated_keys_answer = "{letter}" """
_ROPE_SCORE = "rope(q[None], [offset + 1])[0] @ rope(k[None], [1])[0]"

MISCONCEPTIONS = [
    ("01_weighted_average", "q1", "sums over the components instead of the items", {"q1_answer": _Q1 + "output = (weights[:, None] * values).sum(axis=1)"}),
    ("01_weighted_average", "q1", "ignores the weights (plain mean)", {"q1_answer": _Q1 + "output = values.mean(axis=0)"}),
    ("01_weighted_average", "q1", "pairs the weights with the items in reverse order", {"q1_answer": _Q1 + "output = weights[::-1] @ values"}),
    ("01_weighted_average", "q2", "accepts weights that do not sum to 1", {"q2_answer": _EX1_Q2.format(
        check="np.any(weights < 0)", solve=_SOLVE, reach="np.all(w >= -1e-9)")}),
    ("01_weighted_average", "q2", "accepts negative weights (only the sum is checked)", {"q2_answer": _EX1_Q2.format(
        check="not np.isclose(weights.sum(), 1.0)", solve=_SOLVE, reach="np.all(w >= -1e-9)")}),
    ("01_weighted_average", "q2", "solves for the weights without their sum of 1 (least squares)",
     {"q2_answer": _EX1_Q2.format(check=_CHECK, solve="np.linalg.lstsq(values.T, output, rcond=None)[0]",
                                  reach="np.all(w >= -1e-9)")}),
    ("01_weighted_average", "q2", "reachable when each component lies within the values' range",
     {"q2_answer": _EX1_Q2.format(check=_CHECK, solve=_SOLVE,
                                  reach="np.all((values.min(axis=0) <= output) & (output <= values.max(axis=0)))")}),
    ("01_weighted_average", "q2", "normalises the weights instead of refusing them", {"q2_answer": """
        def weighted_average(values, weights):
            weights = np.asarray(weights, dtype=float)
            return (weights / weights.sum()) @ np.asarray(values, dtype=float)
        def weights_for(values, output):
            values = np.asarray(values, dtype=float)
            return np.linalg.solve(np.vstack([values.T, np.ones(len(values))]), np.append(output, 1.0))
        def attention_can_output(values, output):
            return bool(np.all(weights_for(values, output) >= -1e-9))"""}),
    ("01_weighted_average", "q2", "calls the library's own weighted_average (which refuses bad weights)", {"q2_answer": """
        from qkv.reference import weighted_average as _library_average
        def weighted_average(values, weights):
            return _library_average(values, weights)
        def weights_for(values, output):
            values = np.asarray(values, dtype=float)
            w = np.linalg.solve(np.vstack([values.T, np.ones(len(values))]), np.append(output, 1.0))
            if np.all(w >= 0):  # checked with the library's average, where it takes them
                assert np.allclose(weighted_average(values, w), output)
            return w
        def attention_can_output(values, output):
            try:
                weighted_average(values, weights_for(values, output))
            except ValueError:
                return False
            return True"""}),
    ("01_weighted_average", "q3", "no maximum subtracted (overflows)", {"q3_answer": """
        def softmax(x):
            e = np.exp(np.asarray(x, dtype=float))
            return e / e.sum(axis=-1, keepdims=True)"""}),
    ("01_weighted_average", "q3", "normalises along the first axis", {"q3_answer": """
        def softmax(x):
            x = np.asarray(x, dtype=float)
            e = np.exp(x - x.max(axis=0, keepdims=True))
            return e / e.sum(axis=0, keepdims=True)"""}),
    ("01_weighted_average", "q3", "subtracts the row minimum instead of the maximum", {"q3_answer": """
        def softmax(x):
            x = np.asarray(x, dtype=float)
            e = np.exp(x - x.min(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)"""}),
    ("01_weighted_average", "q3", "subtracts the row mean instead of the maximum", {"q3_answer": """
        def softmax(x):
            x = np.asarray(x, dtype=float)
            e = np.exp(x - x.mean(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)"""}),
    ("01_weighted_average", "q3", "subtracts one maximum for the whole array", {"q3_answer": """
        def softmax(x):
            x = np.asarray(x, dtype=float)
            e = np.exp(x - x.max())
            return e / e.sum(axis=-1, keepdims=True)"""}),
    ("02_qkv_roles", "q1", "keys and values swapped in the translation scenario", {"q1_answer": """
        translation_answer = "D"
        document_answer = "C" """}),
    ("02_qkv_roles", "q1", "query and key swapped in the document scenario", {"q1_answer": """
        translation_answer = "B"
        document_answer = "A" """}),
    ("02_qkv_roles", "q2", "mask reversed (a query sees the later positions)", {"q2_answer": """
        def causal_mask(n):
            i = np.arange(1, n + 1)[:, None]
            j = np.arange(1, n + 1)[None, :]
            return np.where(j >= i, 0.0, -np.inf)"""}),
    ("02_qkv_roles", "q2", "a position may not see itself", {"q2_answer": """
        def causal_mask(n):
            return np.where(np.tri(n, k=-1) == 1, 0.0, -np.inf)"""}),
    ("02_qkv_roles", "q2", "a 0/1 mask instead of an additive 0/-inf one", {"q2_answer": """
        def causal_mask(n):
            return np.tril(np.ones((n, n)))"""}),
    ("02_qkv_roles", "q3", "softmax without the 1/sqrt(d) scaling", {"q3_answer": """
        from qkv.reference import softmax
        def attention(q, k, v, mask=None):
            scores = np.asarray(q) @ np.swapaxes(np.asarray(k), -1, -2)
            if mask is not None:
                scores = scores + mask
            return softmax(scores, axis=-1) @ np.asarray(v)"""}),
    ("02_qkv_roles", "q3", "k.T transposes every axis (breaks batches)", {"q3_answer": """
        from qkv.reference import softmax
        def attention(q, k, v, mask=None):
            q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
            scores = q @ k.T / np.sqrt(q.shape[-1])
            if mask is not None:
                scores = scores + mask
            return softmax(scores, axis=-1) @ v"""}),
    ("02_qkv_roles", "q3", "own softmax without the maximum (unstable for large scores)", {"q3_answer": """
        def attention(q, k, v, mask=None):
            q, k, v = np.asarray(q, dtype=float), np.asarray(k, dtype=float), np.asarray(v, dtype=float)
            scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
            if mask is not None:
                scores = scores + mask
            e = np.exp(scores)
            return e / e.sum(axis=-1, keepdims=True) @ v"""}),
    ("02_qkv_roles", "q3", "mask applied after the softmax", {"q3_answer": """
        from qkv.reference import softmax
        def attention(q, k, v, mask=None):
            q, k, v = np.asarray(q, dtype=float), np.asarray(k, dtype=float), np.asarray(v, dtype=float)
            w = softmax(q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1]), axis=-1)
            if mask is not None:
                w = w * (mask == 0)
            return w @ v"""}),
    ("02_qkv_roles", "q4", "groups taken round-robin (every g-th query head)",
     {"q4_answer": _GQA.format(head="(h - 1) % g + 1", heads="g", width="tau")}),
    ("02_qkv_roles", "q4", "floor instead of ceiling (heads from 0 on one side)",
     {"q4_answer": _GQA.format(head="max(1, h * g // tau)", heads="g", width="tau")}),
    ("02_qkv_roles", "q4", "cache counts tau key/value heads (forgets the sharing)",
     {"q4_answer": _GQA.format(head="(h - 1) // (tau // g) + 1", heads="tau", width="tau")}),
    ("02_qkv_roles", "q4", "head width read from W_k (taken for one head's)",
     {"q4_answer": _GQA.format(head="(h - 1) // (tau // g) + 1", heads="1", width="1")}),
    ("02_qkv_roles", "q4", "each query head reads key/value head h (np.tile of the kv heads)", {"q4_answer": """
        from qkv.reference import attention
        def kv_head(h, tau, g):
            return (h - 1) // (tau // g) + 1
        def grouped_attention(q, k, v):
            reps = q.shape[0] // k.shape[0]
            return attention(q, np.tile(k, (reps, 1, 1)), np.tile(v, (reps, 1, 1)))
        def cache_numbers(W_q, W_k, tau, n_layer, i):
            return 2 * n_layer * W_k.shape[1] * i"""}),
    ("02_qkv_roles", "q4", "hands the work to qkv.memory's grouped_query_attention", {"q4_answer": """
        from qkv import memory
        def kv_head(h, tau, g):
            return (h - 1) // (tau // g) + 1
        def grouped_attention(q, k, v):
            return memory.grouped_query_attention(q, k, v)
        def cache_numbers(W_q, W_k, tau, n_layer, i):
            return 2 * n_layer * W_k.shape[1] * i"""}),
    ("03_zeroed_values", "q1", "positions counted from 0 (zeroes the row after)",
     {"q1_answer": _ZEROED.format(rows="[j for j in positions if j < len(V)]", weights="attention_weights(Q, K)")}),
    ("03_zeroed_values", "q1", "believes a zeroed value loses its weight too", {"q1_answer": """
        def zeroed_value_experiment(Q, K, V, positions):
            V_zeroed = np.array(V, dtype=float)
            weights = attention_weights(Q, K)
            for j in positions:
                V_zeroed[j - 1] = 0.0
                weights[:, j - 1] = 0.0
            total = weights.sum(axis=-1, keepdims=True)
            weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
            return weights, weights @ V_zeroed"""}),
    ("03_zeroed_values", "q1", "zeroes the keys of the positions instead", {"q1_answer": """
        def zeroed_value_experiment(Q, K, V, positions):
            K_zeroed = np.array(K, dtype=float)
            K_zeroed[[j - 1 for j in positions]] = 0.0
            return attention_weights(Q, K_zeroed), attention(Q, K_zeroed, V)"""}),
    ("03_zeroed_values", "q1", "zeroes every value whatever the positions",
     {"q1_answer": _ZEROED.format(rows="list(range(len(V))) if positions else []", weights="attention_weights(Q, K)")}),
    ("03_zeroed_values", "q2", "believes the weights become uniform", {"q2_answer": 'zeroed_values_answer = "A"'}),
    ("03_zeroed_values", "q2", "believes the output equals the input (confuses attention with the residual)",
     {"q2_answer": 'zeroed_values_answer = "C"'}),
    ("03_zeroed_values", "q3", "believes zeroed keys zero the output", {"q3_answer": """
        def zeroed_key_experiment(Q, K, V):
            return np.zeros((len(Q), np.shape(V)[1])), attention_weights(Q, np.zeros_like(K))
        weight_of_key_2 = 0.25"""}),
    ("03_zeroed_values", "q3", "believes a zero key gets zero weight", {"q3_answer": """
        def zeroed_key_experiment(Q, K, V):
            K_zero = np.zeros_like(K)
            return attention(Q, K_zero, V), attention_weights(Q, K_zero)
        weight_of_key_2 = 0.0"""}),
    ("03_zeroed_values", "q3", "zeroes the keys for the weights only, not for the output", {"q3_answer": """
        def zeroed_key_experiment(Q, K, V):
            return attention(Q, K, V), attention_weights(Q, np.zeros_like(K))
        weight_of_key_2 = 0.25"""}),
    ("04_cache_notation", "q1", "positions and heads counted from 0", {"q1_answer": """
        def cache_after_third_token(tau):
            return {(j, h) for j in range(3) for h in range(tau)}"""}),
    ("04_cache_notation", "q1", "cache without the current token (off by one)", {"q1_answer": """
        def cache_after_third_token(tau):
            return {(j, h) for j in range(1, 3) for h in range(1, tau + 1)}"""}),
    ("04_cache_notation", "q1", "only the newest token's pairs", {"q1_answer": """
        def cache_after_third_token(tau):
            return {(3, h) for h in range(1, tau + 1)}"""}),
    ("04_cache_notation", "q1", "calls the library's KVCache.pairs", {"q1_answer": """
        from qkv.reference import KVCache
        def cache_after_third_token(tau):
            cache = KVCache()
            for _ in range(3):
                cache.update(np.zeros((tau, 1, 1)), np.zeros((tau, 1, 1)))
            return cache.pairs()"""}),
    ("04_cache_notation", "q2", "chooses K_{<=2} (positions counted from 0)", {"q2_answer": 'notation_answer = "B"'}),
    ("04_cache_notation", "q2", "only the newest pair is stored", {"q2_answer": 'notation_answer = "A"'}),
    ("04_cache_notation", "q3", "off-by-one cache length (i - 1 positions)",
     {"q3_answer": _KV_COUNTS.format(body="2 * tau * (1 if use_cache else i - 1)")}),
    ("04_cache_notation", "q3", "counts keys but not values",
     {"q3_answer": _KV_COUNTS.format(body="tau * (1 if use_cache else i)")}),
    ("04_cache_notation", "q3", "forgets that every head projects its own",
     {"q3_answer": _KV_COUNTS.format(body="2 * (1 if use_cache else i)")}),
    ("04_cache_notation", "q3", "calls the library's counts in qkv.memory", {"q3_answer": """
        from qkv import memory
        def kv_projections(i, tau, use_cache):
            return 2 * memory.kv_projections(i, cached=use_cache, tau=tau)
        def total_kv_projections(n, tau, use_cache):
            return 2 * memory.total_kv_projections(n, cached=use_cache, tau=tau)"""}),
    ("04_cache_notation", "q4", "counts keys but not values", {"q4_answer": _CACHE_BYTES.format(
        heads='{"MHA": tau, "MQA": 1, "GQA": groups}[kind]', factor="1")}),
    ("04_cache_notation", "q4", "shared heads still cached once per query head", {"q4_answer":
        _CACHE_BYTES.format(heads="tau", factor="2")}),
    ("04_cache_notation", "q4", "GQA keeps tau / groups key/value heads", {"q4_answer": _CACHE_BYTES.format(
        heads='{"MHA": tau, "MQA": 1, "GQA": tau // (groups or 1)}[kind]', factor="2")}),
    ("04_cache_notation", "q4", "multiplies by the model width instead of one head's", {"q4_answer":
        _CACHE_BYTES.format(heads='{"MHA": tau, "MQA": 1, "GQA": groups}[kind] * tau', factor="2")}),
    ("04_cache_notation", "q4", "calls the library's memory.cache_bytes", {"q4_answer": """
        from qkv import memory
        def kv_cache_bytes(kind, i, n_layer, tau, head_dim, bytes_per_number, batch=1, groups=None):
            kind = {"MHA": "full", "MQA": "multi-query", "GQA": "grouped-query"}[kind]
            return memory.cache_bytes(kind, i, n_layer=n_layer, tau=tau, head_dim=head_dim,
                                      bytes_per_number=bytes_per_number, batch=batch, groups=groups)"""}),
    ("04_cache_notation", "q5", "caches the queries too", {"q5_answer": """
        cached = {"q", "k", "v"}
        cached_step_answer = 'B'"""}),
    ("04_cache_notation", "q5", "caches the layer inputs instead", {"q5_answer": """
        cached = {"x"}
        cached_step_answer = 'B'"""}),
    ("04_cache_notation", "q5", "a cached step attends to the new key only", {"q5_answer": """
        cached = {"k", "v"}
        cached_step_answer = 'C'"""}),
    ("04_cache_notation", "q5", "a cached step recomputes every key", {"q5_answer": """
        cached = {"k", "v"}
        cached_step_answer = 'A'"""}),
    ("04_cache_notation", "q6", "the output at position i predicts token i", {"q6_answer": """
        def predicted_token(i):
            return i
        def training_targets(ids):
            return list(ids)"""}),
    ("04_cache_notation", "q6", "shifted the wrong way (position i predicts token i - 1)", {"q6_answer": """
        def predicted_token(i):
            return i - 1
        def training_targets(ids):
            return list(ids[:-1])"""}),
    ("04_cache_notation", "q6", "a target for the last position too (wraps around)", {"q6_answer": """
        def predicted_token(i):
            return i + 1
        def training_targets(ids):
            return list(ids[1:]) + [ids[0]]"""}),
    ("04_cache_notation", "q7", "forgets the offset: every fed token at position 1", {"q7_answer": """
        def decode_position(m, s, pad=0):
            return 1
        def cache_slot(m, s, pad=0):
            return pad + m + s"""}),
    ("04_cache_notation", "q7", "counts the padding as positions", {"q7_answer": """
        def decode_position(m, s, pad=0):
            return pad + m + s
        def cache_slot(m, s, pad=0):
            return pad + m + s"""}),
    ("04_cache_notation", "q7", "the position table's row (from 0), not the position", {"q7_answer": """
        def decode_position(m, s, pad=0):
            return m + s - 1
        def cache_slot(m, s, pad=0):
            return pad + m + s"""}),
    ("04_cache_notation", "q7", "the cache slot leaves out the padding", {"q7_answer": """
        def decode_position(m, s, pad=0):
            return m + s
        def cache_slot(m, s, pad=0):
            return m + s"""}),
    ("04_cache_notation", "q7", "calls the library's padded_positions", {"q7_answer": """
        from qkv.reference.decoder import padded_positions
        def mask(m, s, pad):
            return np.array([[0] * pad + [1] * (m + s)])
        def decode_position(m, s, pad=0):
            return int(padded_positions(mask(m, s, pad))[0, -1]) + 1
        def cache_slot(m, s, pad=0):
            return padded_positions(mask(m, s, pad)).shape[-1]"""}),
    ("05_cached_decoding", "q1", "attends before adding the new key (cache one short)", {"q1_answer": """
        def decode_step(x_i, cache, W_q, W_k, W_v):
            q_i, k_i, v_i = x_i @ W_q, x_i @ W_k, x_i @ W_v
            if cache.length == 0:
                cache.update(k_i[None, None, None, :], v_i[None, None, None, :])
                return v_i
            out = attention(q_i[None, None, None, :], cache.keys, cache.values)[0, 0, 0]
            cache.update(k_i[None, None, None, :], v_i[None, None, None, :])
            return out"""}),
    ("05_cached_decoding", "q1", "caches the inputs x and recomputes every key and value", {"q1_answer": """
        def decode_step(x_i, cache, W_q, W_k, W_v):
            X_seen, _ = cache.update(x_i[None, None, None, :], x_i[None, None, None, :])  # (1, 1, i, d)
            K, V = X_seen @ W_k, X_seen @ W_v
            return attention((x_i @ W_q)[None, None, None, :], K, V)[0, 0, 0]"""}),
    ("05_cached_decoding", "q1", "keeps the past inputs in a list and recomputes the prefix", {"q1_answer": """
        PAST = []
        def decode_step(x_i, cache, W_q, W_k, W_v):
            if cache.length == 0:
                PAST.clear()
            PAST.append(x_i)
            X_seen = np.stack(PAST)
            K, V = X_seen @ W_k, X_seen @ W_v  # every key and value again
            cache.update(K[-1][None, None, None, :], V[-1][None, None, None, :])
            return attention((x_i @ W_q)[None, None, None, :], K[None, None], V[None, None])[0, 0, 0]"""}),
    # the same two, with the matrices copied first, so the counting W_k and W_v see nothing: the cache's
    # contents, caches filled beforehand and two caches used in turn must still catch them
    ("05_cached_decoding", "q1", "caches the inputs x, matrices copied (unseen by the counter)", {"q1_answer": """
        def decode_step(x_i, cache, W_q, W_k, W_v):
            W_q, W_k, W_v = (np.array(W) for W in (W_q, W_k, W_v))
            X_seen, _ = cache.update(x_i[None, None, None, :], x_i[None, None, None, :])
            return attention((x_i @ W_q)[None, None, None, :], X_seen @ W_k, X_seen @ W_v)[0, 0, 0]"""}),
    ("05_cached_decoding", "q1", "past inputs in a list, matrices copied (unseen by the counter)", {"q1_answer": """
        PAST = []
        def decode_step(x_i, cache, W_q, W_k, W_v):
            W_q, W_k, W_v = (np.array(W) for W in (W_q, W_k, W_v))
            if cache.length == 0:
                PAST.clear()
            PAST.append(x_i)
            K, V = np.stack(PAST) @ W_k, np.stack(PAST) @ W_v
            cache.update(K[-1][None, None, None, :], V[-1][None, None, None, :])
            return attention((x_i @ W_q)[None, None, None, :], K[None, None], V[None, None])[0, 0, 0]"""}),
    ("05_cached_decoding", "q2", "window start not clipped at position 1", {"q2_answer": """
        def window(K, i, n_c):
            return np.asarray(K)[i - n_c:i]"""}),
    ("05_cached_decoding", "q2", "window one position too early (leaves out k_i)", {"q2_answer": """
        def window(K, i, n_c):
            return np.asarray(K)[max(0, i - n_c - 1):i - 1]"""}),
    ("05_cached_decoding", "q2", "positions counted from 0 (window one too late)", {"q2_answer": """
        def window(K, i, n_c):
            return np.asarray(K)[max(0, i - n_c + 1):i + 1]"""}),
    ("05_cached_decoding", "q2", "keeps the window in the library's WindowKVCache", {"q2_answer": """
        from qkv.reference import WindowKVCache
        def window(K, i, n_c):
            K = np.asarray(K, dtype=float)
            cache = WindowKVCache(n_c)
            for j in range(i):
                cache.update(K[j][None, None, :], K[j][None, None, :])
            return cache.keys[0]"""}),
    ("05_cached_decoding", "q3", "exponential instead of cumulative average", {"q3_answer": """
        def update_mean(mean_prev, k_i, i):
            return k_i if i == 1 else (k_i + mean_prev) / 2"""}),
    ("05_cached_decoding", "q3", "the previous mean weighted as i keys, not i - 1", {"q3_answer": """
        def update_mean(mean_prev, k_i, i):
            return (k_i + i * mean_prev) / (i + 1)"""}),
    ("05_cached_decoding", "q3", "keeps the history and averages it again every step", {"q3_answer": """
        HISTORY = []
        def update_mean(mean_prev, k_i, i):
            if i == 1:
                HISTORY.clear()
            HISTORY.append(k_i)
            return np.mean(HISTORY, axis=0)"""}),
    ("05_cached_decoding", "q3", "cumsum over the kept history", {"q3_answer": """
        HISTORY = []
        def update_mean(mean_prev, k_i, i):
            if i == 1:
                HISTORY.clear()
            HISTORY.append(k_i)
            return np.cumsum(np.stack(HISTORY), axis=0)[-1] / i"""}),
    # the history copied into plain arrays, out of the instrument's sight: two sequences in turn and a
    # memory filled beforehand must still catch it
    ("05_cached_decoding", "q3", "kept history of copies (unseen by the instrument)", {"q3_answer": """
        HISTORY = []
        def update_mean(mean_prev, k_i, i):
            if i == 1:
                HISTORY.clear()
            HISTORY.append(np.array(k_i, dtype=float))
            return np.mean(HISTORY, axis=0)"""}),
    ("05_cached_decoding", "q3", "averages with the library's CumulativeAverageMemory", {"q3_answer": """
        from qkv.reference import CumulativeAverageMemory
        def update_mean(mean_prev, k_i, i):
            memory = CumulativeAverageMemory()
            for _ in range(i - 1):
                memory.update(mean_prev, mean_prev)
            return memory.update(k_i, k_i)[0]"""}),
    ("05_cached_decoding", "q4", "believes the averages forget step 2", {"q4_answer": 'step_10_answer = "C"'}),
    ("05_cached_decoding", "q4", "takes y_2 for ȳ_2: not an input, so no effect", {"q4_answer": 'step_10_answer = "A"'}),
    ("02_qkv_roles", "q5", "variance of the score taken as its spread, sqrt(d)", {"q5_answer": """
        def score_variance(d, scaled):
            return 1.0 if scaled else d ** 0.5
        unscaled_answer = "B" """}),
    ("02_qkv_roles", "q5", "dividing by sqrt(d) divides the variance by sqrt(d)", {"q5_answer": """
        def score_variance(d, scaled):
            return d ** 0.5 if scaled else float(d)
        unscaled_answer = "B" """}),
    ("02_qkv_roles", "q5", "believes the softmax ignores the scale of the scores", {"q5_answer": """
        def score_variance(d, scaled):
            return 1.0 if scaled else float(d)
        unscaled_answer = "A" """}),
    ("02_qkv_roles", "q5", "believes large scores overflow the softmax", {"q5_answer": """
        def score_variance(d, scaled):
            return 1.0 if scaled else float(d)
        unscaled_answer = "D" """}),
    ("02_qkv_roles", "q6", "heads counted from 0 in the columns", {"q6_answer": """
        def head_values(X, W_v, tau, h):
            head_dim = W_v.shape[1] // tau
            return X @ W_v[:, h * head_dim:(h + 1) * head_dim]
        def all_head_values(X, W_v, tau):
            return np.stack([head_values(X, W_v, tau, h) for h in range(tau)])"""}),
    ("02_qkv_roles", "q6", "reshapes X W_v to (tau, n, d/tau) without moving the axes", {"q6_answer": """
        def all_head_values(X, W_v, tau):
            n, d = X.shape
            return (X @ W_v).reshape(tau, n, d // tau)
        def head_values(X, W_v, tau, h):
            return all_head_values(X, W_v, tau)[h - 1]"""}),
    ("02_qkv_roles", "q6", "head h takes a block of rows of W_v", {"q6_answer": """
        def head_values(X, W_v, tau, h):
            head_dim = W_v.shape[0] // tau
            return X[:, (h - 1) * head_dim:h * head_dim] @ W_v[(h - 1) * head_dim:h * head_dim, (h - 1) * head_dim:h * head_dim]
        def all_head_values(X, W_v, tau):
            return np.stack([head_values(X, W_v, tau, h) for h in range(1, tau + 1)])"""}),
    ("05_cached_decoding", "q5", "one window only (forgets the layers)", {"q5_answer": """
        def oldest_reachable(i, n_layer, n_c):
            return max(1, i - n_c + 1)"""}),
    ("05_cached_decoding", "q5", "each layer reaches n_c positions further (counts itself twice)", {"q5_answer": """
        def oldest_reachable(i, n_layer, n_c):
            return max(1, i - n_layer * n_c + 1)"""}),
    ("05_cached_decoding", "q5", "not clipped at position 1", {"q5_answer": """
        def oldest_reachable(i, n_layer, n_c):
            return i - n_layer * (n_c - 1)"""}),
    ("05_cached_decoding", "q6", "attends over every key instead of the average", {"q6_answer": """
        from qkv.reference import attention as _attention
        def attend_to_average(q, K, V):
            return _attention(np.asarray(q)[None], K, V)[0]
        average_depends_on_query = True"""}),
    ("05_cached_decoding", "q6", "scales the average value by its score", {"q6_answer": """
        def attend_to_average(q, K, V):
            k_bar, v_bar = K.mean(axis=0), V.mean(axis=0)
            return (np.asarray(q) @ k_bar / np.sqrt(len(k_bar))) * v_bar
        average_depends_on_query = True"""}),
    ("05_cached_decoding", "q6", "right output, but believes the query still chooses", {"q6_answer": """
        def attend_to_average(q, K, V):
            return np.mean(V, axis=0)
        average_depends_on_query = True"""}),
    ("05_cached_decoding", "q7", "the window keeps the oldest rows", {"q7_answer": """
        def window_update(S_kv, mem_pre, n_c):
            K_mem = np.concatenate([mem_pre[0], np.asarray(S_kv[0])[None]])[:n_c]
            V_mem = np.concatenate([mem_pre[1], np.asarray(S_kv[1])[None]])[:n_c]
            return K_mem, V_mem
        not_an_update = "D" """}),
    ("05_cached_decoding", "q7", "the window keeps one row too many", {"q7_answer": """
        def window_update(S_kv, mem_pre, n_c):
            K_mem = np.concatenate([mem_pre[0], np.asarray(S_kv[0])[None]])[-(n_c + 1):]
            V_mem = np.concatenate([mem_pre[1], np.asarray(S_kv[1])[None]])[-(n_c + 1):]
            return K_mem, V_mem
        not_an_update = "D" """}),
    ("05_cached_decoding", "q7", "takes a growing memory for one that is no update", {"q7_answer": """
        def window_update(S_kv, mem_pre, n_c):
            K_mem = np.concatenate([mem_pre[0], np.asarray(S_kv[0])[None]])[-n_c:]
            V_mem = np.concatenate([mem_pre[1], np.asarray(S_kv[1])[None]])[-n_c:]
            return K_mem, V_mem
        not_an_update = "C" """}),
    ("05_cached_decoding", "q8", "reads s as a function of the last average only", {"q8_answer": """
        s_notation_answer = "A"
        step_10_independent_of_y2_bar = False"""}),
    ("05_cached_decoding", "q8", "believes step 10 does not depend on the average of step 2", {"q8_answer": """
        s_notation_answer = "B"
        step_10_independent_of_y2_bar = True"""}),
    ("05_cached_decoding", "q9", "rotates the query and the key by the same position", {"q9_answer": _ROPE.format(
        score="rope(q[None], [offset + 1])[0] @ rope(k[None], [offset + 1])[0]", slot="slot", letter="B")}),
    ("05_cached_decoding", "q9", "puts the key after the query", {"q9_answer": _ROPE.format(
        score="rope(q[None], [1])[0] @ rope(k[None], [1 + offset])[0]", slot="slot", letter="B")}),
    ("05_cached_decoding", "q9", "a cached key rotated by the current position", {"q9_answer": _ROPE.format(
        score=_ROPE_SCORE, slot="m + s", letter="B")}),
    ("05_cached_decoding", "q9", "believes every step rotates the cached keys again", {"q9_answer": _ROPE.format(
        score=_ROPE_SCORE, slot="slot", letter="A")}),
]

# ---- valid answers written differently from the solution: each must get full marks -------------------

ALTERNATIVES = [
    ("01_weighted_average", "q1", "sum of products in a loop", {"q1_answer": _Q1 + "output = sum(w * v for w, v in zip(weights, values))"}),
    ("01_weighted_average", "q2", "einsum, weights from the differences to item 1, a tolerance on the sign",
     {"q2_answer": """
        def weighted_average(values, weights):
            weights = np.asarray(weights, dtype=float)
            if weights.min() < 0 or abs(weights.sum() - 1) > 1e-9:
                raise ValueError("attention weights are non-negative and sum to 1")
            return np.einsum("n,nd->d", weights, np.asarray(values, dtype=float))
        def weights_for(values, output):
            values, output = np.asarray(values, dtype=float), np.asarray(output, dtype=float)
            rest = np.linalg.solve((values[1:] - values[0]).T, output - values[0])  # w_2 .. w_n
            return np.concatenate([[1 - rest.sum()], rest])
        def attention_can_output(values, output):
            return bool(weights_for(values, output).min() > -1e-12)"""}),
    ("01_weighted_average", "q3", "log-sum-exp with the row maximum", {"q3_answer": """
        def softmax(x):
            x = np.asarray(x, dtype=float)
            shifted = x - np.amax(x, axis=-1, keepdims=True)
            return np.exp(shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True)))"""}),
    ("02_qkv_roles", "q1", "letters in lower case with spaces", {"q1_answer": """
        translation_answer = " b"
        document_answer = "c " """}),
    ("02_qkv_roles", "q2", "np.triu of a matrix of -inf", {"q2_answer": """
        def causal_mask(n):
            return np.triu(np.full((n, n), -np.inf), k=1)"""}),
    ("02_qkv_roles", "q3", "einsum and an own stable softmax", {"q3_answer": """
        def attention(q, k, v, mask=None):
            q, k, v = (np.asarray(a, dtype=float) for a in (q, k, v))
            scores = np.einsum("...md,...nd->...mn", q, k) / np.sqrt(q.shape[-1])
            if mask is not None:
                scores = scores + mask
            e = np.exp(scores - scores.max(axis=-1, keepdims=True))
            return np.einsum("...mn,...nd->...md", e / e.sum(axis=-1, keepdims=True), v)"""}),
    ("02_qkv_roles", "q4", "math.ceil, a loop over the query heads, the cache from W_k's columns", {"q4_answer": """
        import math
        def kv_head(h, tau, g):
            return math.ceil(h * g / tau)
        def grouped_attention(q, k, v):
            out = []
            for h in range(1, q.shape[0] + 1):
                j = kv_head(h, q.shape[0], k.shape[0]) - 1
                s = q[h - 1] @ k[j].T / np.sqrt(q.shape[-1])
                e = np.exp(s - s.max(axis=-1, keepdims=True))
                out.append(e / e.sum(axis=-1, keepdims=True) @ v[j])
            return np.stack(out)
        def cache_numbers(W_q, W_k, tau, n_layer, i):
            per_position = 2 * W_k.shape[1]  # a key and a value: g heads of head_dim numbers each
            return n_layer * per_position * i"""}),
    ("03_zeroed_values", "q1", "weights by hand, a boolean mask of the rows kept", {"q1_answer": """
        def zeroed_value_experiment(Q, K, V, positions):
            scores = Q @ K.T / np.sqrt(Q.shape[-1])
            e = np.exp(scores - scores.max(axis=-1, keepdims=True))
            weights = e / e.sum(axis=-1, keepdims=True)
            keep = ~np.isin(np.arange(1, len(V) + 1), positions)
            return weights, weights @ (V * keep[:, None])"""}),
    ("03_zeroed_values", "q2", "letter in lower case", {"q2_answer": 'zeroed_values_answer = "b"'}),
    ("03_zeroed_values", "q3", "uniform weights written directly, a fraction", {"q3_answer": """
        def zeroed_key_experiment(Q, K, V):
            m, n = len(Q), len(K)
            weights = np.full((m, n), 1.0 / n)
            return weights @ V, weights
        weight_of_key_2 = 1 / 4"""}),
    ("04_cache_notation", "q1", "itertools.product", {"q1_answer": """
        import itertools
        def cache_after_third_token(tau):
            return set(itertools.product(range(1, 4), range(1, tau + 1)))"""}),
    ("04_cache_notation", "q2", "letter with spaces", {"q2_answer": 'notation_answer = " C "'}),
    ("04_cache_notation", "q3", "closed forms", {"q3_answer": """
        def kv_projections(i, tau, use_cache):
            return 2 * tau if use_cache else 2 * tau * i
        def total_kv_projections(n, tau, use_cache):
            return 2 * tau * n if use_cache else tau * n * (n + 1)"""}),
    ("04_cache_notation", "q4", "if/elif and math.prod", {"q4_answer": """
        import math
        def kv_cache_bytes(kind, i, n_layer, tau, head_dim, bytes_per_number, batch=1, groups=None):
            if kind == "MHA":
                heads = tau
            elif kind == "MQA":
                heads = 1
            else:
                heads = groups
            return math.prod([2, n_layer, heads, i, head_dim, bytes_per_number, batch])"""}),
    ("04_cache_notation", "q5", "capital names in another order, a lower-case letter", {"q5_answer": """
        cached = set(["V", "K"])
        cached_step_answer = 'b'"""}),
    ("04_cache_notation", "q6", "a loop and a comprehension", {"q6_answer": """
        def predicted_token(i):
            return 1 + i
        def training_targets(ids):
            return [ids[k] for k in range(1, len(ids))]"""}),
    ("04_cache_notation", "q7", "counts the prompt, then the steps", {"q7_answer": """
        def decode_position(m, s, pad=0):
            first_generated = m + 1
            return first_generated + (s - 1)
        def cache_slot(m, s, pad=0):
            return pad + decode_position(m, s)"""}),
    ("05_cached_decoding", "q1", "copies the matrices and uses np.dot and the returned (K, V)", {"q1_answer": """
        def decode_step(x_i, cache, W_q, W_k, W_v):
            W_q, W_k, W_v = (np.array(W, dtype=float) for W in (W_q, W_k, W_v))
            k_i, v_i = np.dot(x_i, W_k), np.dot(x_i, W_v)
            K, V = cache.update(k_i.reshape(1, 1, 1, -1), v_i.reshape(1, 1, 1, -1))
            scores = K[0, 0] @ np.dot(x_i, W_q) / np.sqrt(len(x_i))
            w = np.exp(scores - scores.max())
            return (w / w.sum()) @ V[0, 0]"""}),
    ("05_cached_decoding", "q2", "list of rows by position", {"q2_answer": """
        def window(K, i, n_c):
            K = np.asarray(K)
            return np.stack([K[j - 1] for j in range(max(1, i - n_c + 1), i + 1)])"""}),
    ("05_cached_decoding", "q3", "the previous mean moved a 1/i of the way to the new key", {"q3_answer": """
        def update_mean(mean_prev, k_i, i):
            mean_prev = np.asarray(mean_prev, dtype=float)
            return mean_prev + (k_i - mean_prev) / i"""}),
    ("05_cached_decoding", "q4", "letter in lower case", {"q4_answer": 'step_10_answer = "b"'}),
    ("02_qkv_roles", "q5", "variances added in a loop, a lower-case letter", {"q5_answer": """
        def score_variance(d, scaled):
            total = 0.0
            for _ in range(d):
                total += 1.0  # one product of two independent numbers of variance 1
            return total / d if scaled else total
        unscaled_answer = " b" """}),
    ("02_qkv_roles", "q6", "reshape to (n, tau, d/tau), then heads first", {"q6_answer": """
        def all_head_values(X, W_v, tau):
            n, d = X.shape
            return np.transpose((X @ W_v).reshape(n, tau, d // tau), (1, 0, 2))
        def head_values(X, W_v, tau, h):
            return all_head_values(X, W_v, tau)[h - 1]"""}),
    ("05_cached_decoding", "q5", "one layer at a time", {"q5_answer": """
        def oldest_reachable(i, n_layer, n_c):
            position = i
            for _ in range(n_layer):
                position = max(1, position - (n_c - 1))
            return position"""}),
    ("05_cached_decoding", "q6", "the mean of the values directly", {"q6_answer": """
        def attend_to_average(q, K, V):
            return np.asarray(V, dtype=float).sum(axis=0) / len(V)  # one key: weight 1
        average_depends_on_query = bool(0)"""}),
    ("05_cached_decoding", "q7", "vstack and a start index", {"q7_answer": """
        def window_update(S_kv, mem_pre, n_c):
            K_all = np.vstack([mem_pre[0], S_kv[0]])
            V_all = np.vstack([mem_pre[1], S_kv[1]])
            start = max(0, len(K_all) - n_c)
            return K_all[start:], V_all[start:]
        not_an_update = " d" """}),
    ("05_cached_decoding", "q8", "a lower-case letter, False written as a comparison", {"q8_answer": """
        s_notation_answer = "b"
        step_10_independent_of_y2_bar = 2 > 10 - 1"""}),
    ("05_cached_decoding", "q9", "a query at position 100, the slot as an int", {"q9_answer": _ROPE.format(
        score="rope(q[None], [100 + offset])[0] @ rope(k[None], [100])[0]", slot="int(slot)", letter="b")}),
]


def misconception_student(index: int) -> str:
    return f"wrong{index:02d}"


def alternative_student(index: int) -> str:
    return f"valid{index:02d}"


# ---- bad inputs, all on assignment 01 (10 points: q1 3, q2 4, q3 3) -------------------------------------

BAD = "01_weighted_average"


def _strip_nbgrader(nb, drop_ids: bool = False):
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        cell.metadata.pop("nbgrader", None)
        cell.metadata.pop("qkv", None)
        cell.metadata.pop("deletable", None)
        cell.metadata.pop("editable", None)
    if drop_ids:
        nb.nbformat_minor = 4
        for cell in nb.cells:
            cell.pop("id", None)
    return nb


def _without(nb, gid):
    nb = copy.deepcopy(nb)
    nb.cells = [c for c in nb.cells if _gid(c) != gid]
    return nb


def _edit(nb, gid, text):
    nb = copy.deepcopy(nb)
    for c in nb.cells:
        if _gid(c) == gid:
            c.source = text
    return nb


# Reads hidden test code back in the kernel, in every way we know of, and tries to get it into the feedback:
# the input history (In, _ih, %history), the source of the calling frames (a function a hidden test calls),
# linecache, and an exception message. q2's weights_for raises on purpose (0 of 4), q3's works (3 of 3).
PEEK_Q2 = """
import sys
def weights_for(values, output):
    frame, seen = sys._getframe(1), []
    while frame is not None:  # the source a harness once ran in the kernel, hidden lines included
        seen.append(str(frame.f_locals.get("source", "")))
        frame = frame.f_back
    raise ValueError("\\n".join(seen))
"""
PEEK_Q3 = """
import inspect, linecache
STOLEN = []
def softmax(x):
    frame = inspect.currentframe().f_back
    while frame is not None:
        try:
            STOLEN.append(inspect.getsource(frame.f_code))
        except (OSError, TypeError):
            pass
        frame = frame.f_back
    x = np.asarray(x, dtype=float)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
"""
PEEK_HISTORY = """
print('\\n'.join(In))
print(_ih)
get_ipython().run_line_magic('history', '')
import linecache
print(repr(linecache.cache)[:20000])
"""
PEEK_END = """
tests = [source for source in STOLEN if source.startswith("# Test")]
print('\\n'.join(tests)[:20000])
raise RuntimeError(repr(tests[-1])[-500:])
"""


def peeking_notebook() -> nbformat.NotebookNode:
    nb = filled(BAD, {"q2_answer": PEEK_Q2, "q3_answer": PEEK_Q3})
    after = next(k for k, c in enumerate(nb.cells) if _gid(c) == "q2_reach")
    nb.cells.insert(after + 1, nbformat.v4.new_code_cell(PEEK_HISTORY.strip()))
    nb.cells.append(nbformat.v4.new_code_cell(PEEK_END.strip()))
    return nb


def hidden_lines(name: str, min_chars: int = 10) -> list[str]:
    """The lines of the hidden tests of ``name`` that no released notebook shows, whitespace removed."""
    def squeeze(line: str) -> str:
        return "".join(line.split())

    public = "\n".join(squeeze(c.source) for other in ASSIGNMENTS
                       for c in read_notebook(release_path(ROOT, other)).cells)
    lines, inside = set(), False
    for cell in read_notebook(source_path(ROOT, name)).cells:
        for line in cell.source.splitlines():
            inside = inside or "BEGIN HIDDEN TESTS" in line
            if inside and len(squeeze(line)) >= min_chars and squeeze(line) not in public:
                lines.add(squeeze(line))
            inside = inside and "END HIDDEN TESTS" not in line
    return sorted(lines)


def bad_inputs(base: Path) -> dict[str, dict]:
    """Write the bad submissions under ``base``; return student -> expected {score, status, note, q}."""
    good = filled(BAD)
    wrong_q1 = filled(BAD, {"q1_answer": "values = np.array([[2.0, 10.0], [4.0, 0.0], [8.0, 5.0]])\n"
                                         "output = values.mean(axis=0)"})
    cases = {
        "not_json": ("this is not a notebook {", {"score": 0, "status": "unreadable", "note": "not a readable notebook"}),
        "json_not_notebook": (json.dumps({"hello": [1, 2]}), {"score": 0, "status": "unreadable", "note": "not a readable"}),
        "stripped": (nbformat.writes(_strip_nbgrader(good)), {"score": 10, "status": "graded", "note": "no nbgrader metadata"}),
        "stripped_no_ids": (json.dumps(_strip_nbgrader(good, drop_ids=True)),
                            {"score": 10, "status": "graded", "note": "lost its nbgrader metadata"}),
        "test_deleted": (_without(good, "q2_random"), {"score": 10, "status": "graded", "note": "q2_random was deleted"}),
        "tests_deleted_wrong": (_without(_without(wrong_q1, "q1_value"), "q1_shape"),
                                {"score": 8, "status": "graded", "note": "q1_value was deleted", "q": {"q1": 1}}),
        "locked_edited": (_edit(_edit(good, "q1_text", "I rewrote the question"), "imports", "import numpy as np\nimport math"),
                          {"score": 10, "status": "graded", "note": "imports was edited"}),
        "test_edited_to_pass": (_edit(wrong_q1, "q1_value", "pass"),
                                {"score": 8, "status": "graded", "note": "q1_value was edited", "q": {"q1": 1}}),
        "infinite_loop": (filled(BAD, {"q2_answer": "while True:\n    pass"}),
                          {"score": 6, "status": "graded", "note": "ran longer than", "q": {"q2": 0}}),
        "loop_in_function": (filled(BAD, {"q3_answer": "def softmax(x):\n    while True:\n        pass"}),
                             {"score": 7, "status": "graded", "note": "ran longer than", "q": {"q3": 0}}),
        "os_exit": (filled(BAD, {"q1_answer": "import os\nos._exit(1)"}),
                    {"score": 7, "status": "graded", "note": "kernel died", "q": {"q1": 0}}),
        # kills the process that runs its kernel (a grading worker), whichever one it lands in, every time
        # in the sandbox its parent is the sandbox's own init, which ignores it: the grader is out of reach
        "kills_grader": (filled(BAD, {"q1_answer": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)"}),
                         {"score": 7, "status": "graded", "note": None, "q": {"q1": 0}}),
        "segfault": (filled(BAD, {"q3_answer": "import ctypes\nctypes.string_at(0)"}),
                     {"score": 7, "status": "graded", "note": "kernel died", "q": {"q3": 0}}),
        "huge_output": (filled(BAD, {"q1_answer": solution_sources(BAD)["q1_answer"] + "\nprint('x' * 30_000_000)\n"
                                                  "for _ in range(100_000):\n    print('spam')"}),
                        {"score": 10, "status": "graded", "note": "truncated"}),
        "wrong_type": (filled(BAD, {"q1_answer": "output = '4.0, 2.5'",
                                    "q2_answer": "def weighted_average(values, weights):\n    return 'the average'"}),
                       {"score": 3, "status": "graded", "note": None, "q": {"q1": 0, "q2": 0}}),
        "peeks_at_tests": (peeking_notebook(), {"score": 6, "status": "graded", "note": None, "q": {"q2": 0, "q3": 3}}),
        "wrong_shape": (filled(BAD, {"q3_answer": "def softmax(x):\n    x = np.asarray(x, dtype=float)\n"
                                                  "    return np.exp(x).ravel() / np.exp(x).sum()"}),
                        {"score": 7, "status": "graded", "note": None, "q": {"q3": 0}}),
    }
    expected = {}
    for student, (content, exp) in cases.items():
        submit(base, student, BAD, content)
        expected[student] = exp
    # a notebook under another name, and an extra unknown file beside a good one
    write_nb(good, base / "missing_nb" / BAD / "my_copy.ipynb")
    expected["missing_nb"] = {"score": 0, "status": "missing", "note": "my_copy.ipynb"}
    submit(base, "extra_file", BAD, good)
    (base / "extra_file" / BAD / "scratch.txt").write_text("notes to self")
    (base / "extra_file" / "99_unknown").mkdir()
    expected["extra_file"] = {"score": 10, "status": "graded", "note": None}
    return expected
