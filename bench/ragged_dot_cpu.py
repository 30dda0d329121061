"""Is `jax.lax.ragged_dot` a grouped GEMM for dropless experts on XLA CPU?

The expert feed-forward d -> h -> d of N = T k rows split evenly over E
experts, forward + backward under `jax.jit`, three ways, side by side:
the dense floor (one [N, d] @ [d, h] network: the same FLOPs), a batched
einsum over an [E, N / E, d] buffer (no dispatch: the batched floor of
`bench/moe_profile.py`), and `jax.lax.ragged_dot` with the group sizes.
Prints milliseconds (median of 5) and the ratio to the dense floor; a
configuration XLA cannot allocate is reported as such.

    KERAS_BACKEND=jax python bench/ragged_dot_cpu.py
    KERAS_BACKEND=jax python bench/ragged_dot_cpu.py --quick  # seconds

Results: bench/README.md ("ragged_dot on the CPU").
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

# (tokens, k, d, h, experts, repeats)
FULL = (4096, 2, 512, 1024, (8, 64, 256, 1024), 5)
QUICK = (256, 2, 64, 128, (4, 16), 2)


def median_ms(step, *args, repeats=5):
    jax.block_until_ready(step(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def gradient(loss):
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="T=256, d=64, h=128, experts 4 and 16, "
                        "2 repeats.")
    tokens, k, dim, hidden_dim, expert_counts, repeats = (
        QUICK if parser.parse_args(argv).quick else FULL)
    rows = tokens * k
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (rows, dim), jnp.float32)

    def dense(x, w_in, w_out):
        return jnp.sum(jax.nn.relu(x @ w_in) @ w_out)

    floor = median_ms(gradient(dense), x,
                      jax.random.normal(key, (dim, hidden_dim)) * 0.02,
                      jax.random.normal(key, (hidden_dim, dim)) * 0.02,
                      repeats=repeats)
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}; N={rows} "
          f"rows, d={dim}, h={hidden_dim}, forward + backward")
    print(f"dense floor: {floor:.2f} ms")
    print("| E | batched einsum ms | batched / floor | ragged_dot ms | "
          "ragged_dot / floor |")
    print("|---:|---:|---:|---:|---:|")
    for experts in expert_counts:
        w_in = jax.random.normal(key, (experts, dim, hidden_dim)) * 0.02
        w_out = jax.random.normal(key, (experts, hidden_dim, dim)) * 0.02
        sizes = jnp.full((experts,), rows // experts, jnp.int32)

        def batched(x, w_in, w_out, experts=experts, rows=rows):
            buffer = x.reshape(experts, rows // experts, dim)
            hidden = jax.nn.relu(jnp.einsum("ecd,edh->ech", buffer, w_in))
            return jnp.sum(jnp.einsum("ech,ehd->ecd", hidden, w_out))

        def ragged(x, w_in, w_out, sizes=sizes):
            hidden = jax.nn.relu(jax.lax.ragged_dot(x, w_in, sizes))
            return jnp.sum(jax.lax.ragged_dot(hidden, w_out, sizes))

        batched_ms = median_ms(gradient(batched), x, w_in, w_out,
                               repeats=repeats)
        try:
            ragged_ms = median_ms(gradient(ragged), x, w_in, w_out,
                                  repeats=repeats)
            ragged_cells = f"{ragged_ms:.2f} | {ragged_ms / floor:.2f}x"
        except jax.errors.JaxRuntimeError as error:
            ragged_cells = f"{str(error).split(':')[-1].strip()[:40]} | -"
        print(f"| {experts} | {batched_ms:.2f} | {batched_ms / floor:.2f}x"
              f" | {ragged_cells} |", flush=True)


if __name__ == "__main__":
    main()
