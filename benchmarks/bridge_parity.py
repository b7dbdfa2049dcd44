"""Gemma-3-270M through TransformerBridge against HookedTransformer, on the same weights.

One run, offline, from the checkpoint ``load_model("gemma-3-270m")`` caches, with
``load_model(..., backend="hooked")`` and ``load_model(..., backend="bridge")``:

1. ``harvest_shifts`` on the built-in ``binary`` pairs at ``blocks.6`` and ``blocks.12``
   ``hook_resid_post`` (last token) through both backends: the largest relative difference of
   a shift row (``|s_bridge - s_hooked| / |s_hooked|``), of an activation row, and the largest
   element difference over the largest shift element.
2. Steering the bridge with the unit mean shift of those pairs at ``blocks.6``: greedy text
   changes under ``steer``, and after the context the unsteered text comes back token for
   token.
3. ``positions="generated"``: ``bridge.generate`` with and without its KV cache gives the same
   tokens; ``generate_tokens`` (the package's batched KV loop) equals ``bridge.generate``.
4. The unsteered greedy text of both backends.

Parts 2-4 need a stack where the bridge fills its KV cache (transformers < 5.24 with
TransformerLens 3.9); on other stacks they are reported as not run, with the reason.
Usage::

    HF_HUB_OFFLINE=1 python benchmarks/bridge_parity.py [--out benchmarks/results/bridge_parity]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import transformers

from ssae_lens._core.backend import Model, backend
from ssae_lens._core.io import write_json_atomic, write_text_atomic
from ssae_lens._core.threads import intra_op_threads
from ssae_lens.activations import harvest_shifts
from ssae_lens.data import load_pairs
from ssae_lens.generation import generate_tokens
from ssae_lens.models import load_model
from ssae_lens.steering import SteeringVector, steer

HOOKS = ["blocks.6.hook_resid_post", "blocks.12.hook_resid_post"]
PROMPTS = ["The king said that", "He is my brother and he"]
N_NEW = 12


def greedy(model: Model, prompts: list[str], cache: bool = True) -> torch.Tensor:
    return model.generate(
        prompts, max_new_tokens=N_NEW, do_sample=False, stop_at_eos=False,
        use_past_kv_cache=cache, verbose=False, return_type="tokens", padding_side="left",
    )  # fmt: skip


def row_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest relative L2 difference of a row of ``a`` from the same row of ``b``."""
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/bridge_parity")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    with intra_op_threads(args.threads):
        res = run()
    out = Path(args.out)
    write_json_atomic(out.with_suffix(".json"), res)
    lines = ["# Gemma-3-270M: TransformerBridge vs HookedTransformer (same weights)", ""]
    lines += [f"Command: `HF_HUB_OFFLINE=1 python benchmarks/bridge_parity.py --out {out}`", ""]
    lines += [f"- `{k}`: {v!r}" for k, v in res.items()]
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def run() -> dict:
    res: dict = {"transformers": transformers.__version__, "hooks": HOOKS}
    pairs = load_pairs("binary")
    hooked = load_model("gemma-3-270m")  # first: it builds the checkpoint if needed
    bridge = load_model("gemma-3-270m", backend="bridge")
    res["model_names"] = [hooked.cfg.model_name, bridge.cfg.model_name]
    missing = sorted(set(hooked.hook_dict) - set(bridge.hook_dict))
    res["hooked_hook_names_missing_on_bridge"] = missing

    acts = {}
    for name, model in (("hooked", hooked), ("bridge", bridge)):
        start = time.perf_counter()
        acts[name] = harvest_shifts(model, pairs, HOOKS, return_both=True, progress=False)
        res[f"harvest_seconds_{name}"] = round(time.perf_counter() - start, 1)
    res["n_pairs"] = len(pairs)
    for hook in HOOKS:
        (hs, ht), (bs, bt) = acts["hooked"][hook], acts["bridge"][hook]
        layer = hook.split(".")[1]
        shift_h, shift_b = ht - hs, bt - bs
        res[f"L{layer}_shift_max_row_rel_diff"] = row_rel(shift_b, shift_h)
        res[f"L{layer}_activation_max_row_rel_diff"] = max(row_rel(bs, hs), row_rel(bt, ht))
        res[f"L{layer}_shift_max_abs_diff_over_max_abs"] = float(
            (shift_b - shift_h).abs().max() / shift_h.abs().max()
        )
        res[f"L{layer}_median_shift_norm"] = float(shift_h.norm(dim=-1).median())

    hook = HOOKS[0]
    hs, ht = acts["hooked"][hook]
    mean_shift = (ht - hs).mean(0)
    vector = SteeringVector(mean_shift / mean_shift.norm(), hook, model_name=hooked.cfg.model_name)
    scale = 2.0 * res["L6_median_shift_norm"]
    res["steer_scale"] = scale
    try:
        tokens = bridge.to_tokens(PROMPTS[0])
        backend(bridge).prefill(tokens, torch.ones_like(tokens))
    except RuntimeError as err:
        res["kv_cache"] = f"not usable: {err}"
        return res
    res["kv_cache"] = "usable"
    before = greedy(bridge, PROMPTS)
    with steer(bridge, vector, scale=scale):  # a HookedTransformer vector: no warning
        steered = greedy(bridge, PROMPTS)
    after = greedy(bridge, PROMPTS)
    res["greedy_bridge"] = bridge.to_string(before)
    res["greedy_bridge_steered"] = bridge.to_string(steered)
    res["steering_changes_every_row"] = all(
        not torch.equal(s, b) for s, b in zip(steered, before, strict=True)
    )
    res["after_context_equals_unsteered"] = torch.equal(after, before)
    with steer(bridge, vector, scale=scale, positions="generated"):
        kv, no_kv = greedy(bridge, PROMPTS), greedy(bridge, PROMPTS, cache=False)
        ours, _ = generate_tokens(bridge, PROMPTS, N_NEW, do_sample=False)
    res["generated_positions_kv_equals_no_kv"] = torch.equal(kv, no_kv)
    res["generated_positions_generate_tokens_equals_generate"] = torch.equal(ours, kv)
    res["generated_positions_text"] = bridge.to_string(kv)
    res["greedy_hooked"] = hooked.to_string(greedy(hooked, PROMPTS))
    res["bridge_unsteered_equals_hooked_unsteered"] = res["greedy_bridge"] == res["greedy_hooked"]
    return res


if __name__ == "__main__":
    main()
