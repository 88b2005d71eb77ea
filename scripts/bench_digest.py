"""The cost of a checkpoint's content digest per save, against the save itself.

Builds the train state (parameters and AdamW moments) of a task config's model, at its full
size by default (system A's paper size for `configs/va.py`), then times, after a warm-up:
- the digest (`abaw_jax.digests.digest`: one jitted reduction over every array, 16 hex digits
  per array back to the host), which each save adds;
- the orbax save of the same state to a local directory (synchronous: until it is on disk),
  and the restore with and without the digest check.

  python scripts/bench_digest.py                       # configs/va.py: system A, paper size
  python scripts/bench_digest.py --config configs/va.py:model=tcn --repeats 5
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from abaw_jax import checkpoints, digests, runs, sharding  # noqa: E402
from scripts.common import load_config_arg  # noqa: E402


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/va.py")
    parser.add_argument("--features", type=int, default=768, help="input width (ViT-B/16: 768)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    config = load_config_arg(args.config)
    mesh = sharding.make_mesh(-1)
    dims = ({n: args.features for n in config.model.feature_sets}
            if config.model.name == "fusion" else args.features)
    setup = runs.setup_model(config, dims, mesh)
    state = jax.block_until_ready(setup.init_fn(setup.init_rng))
    leaves = jax.tree.leaves(state)
    nbytes = sum(x.nbytes for x in leaves)
    params = sum(x.size for x in jax.tree.leaves(state["params"]))

    t = time.perf_counter()
    record = digests.digest(state)
    first = time.perf_counter() - t
    digest_s = timed(lambda: digests.digest(state), args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        directory = pathlib.Path(tmp) / "checkpoints"
        with ocp.CheckpointManager(directory, item_names=("state", "digest"),
                                   options=ocp.CheckpointManagerOptions(
                                       max_to_keep=1, enable_async_checkpointing=False)) as m:
            step = [0]

            def save():
                step[0] += 1
                m.save(step[0], args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        digest=ocp.args.JsonSave(record)))

            save_s = timed(save, max(2, args.repeats // 2))
            last = step[0]
            restore_s = timed(lambda: m.restore(last, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(setup.abstract_state))), max(2, args.repeats // 2))
            checked_s = timed(lambda: checkpoints.restore_verified(m, last, setup.abstract_state),
                              max(2, args.repeats // 2))

    ms = lambda xs: f"{1e3 * statistics.median(xs):.1f} ms"  # noqa: E731
    print(f"config {args.config}: model {config.model.name}, {params / 1e6:.2f} M parameters, "
          f"train state {nbytes / 1e6:.1f} MB in {len(leaves)} arrays; "
          f"{jax.device_count()} {jax.default_backend()} device(s)")
    print(f"digest per save:  {ms(digest_s)} (median of {args.repeats}; first call with its "
          f"compile {1e3 * first:.0f} ms)")
    print(f"orbax save:       {ms(save_s)} (synchronous, to local disk)")
    print(f"restore:          {ms(restore_s)}; with the digest check {ms(checked_s)}")
    print(f"digest / save:    {statistics.median(digest_s) / statistics.median(save_s):.1%}")


if __name__ == "__main__":
    main()
