"""Replica benchmark: two `shoprec serve` processes sharing one Redis against one, on one machine.

    python -m benchmarks.run replicas [--quick]
    python -m benchmarks.bench_replicas [--quick] [--pin servers|none]

The shop is the one benchmarks/bench_serving.py builds and caches (the 5k-item shop with 20k
customers, ALS; `--quick`: its 300-item quick shop). Two replicas are started the way a shop runs
them: `shoprec serve --bundle B --data WS --port P`, one worker each, the same `REDIS_URL` (the
machine's Redis, 127.0.0.1:6379, under a key prefix of this run's own, deleted afterwards) and the
same workspace WS. WS is a private serving workspace whose `features/` and `validated/` are links
to the cached shop's, with a change log and impression log of its own, so the purchases this
benchmark posts never reach the cached shop. By default each replica is pinned to a core of its
own (`taskset -c 0` / `-c 1`; wrk, Redis and everything else are left to the scheduler; `--pin
none` pins nothing and writes replicas_nopin.json). A replica's requests run on one thread of its
one worker (Python's GIL), so a replica never uses more than a core and the pin takes nothing from
it; it keeps two replicas off one core, and with one replica the other core is left to wrk and
Redis.

1. The same answer (before any load): the same requests, user + context (the shop mix of pages of
   bench_serving: item pages, category pages, unknown customers), to replica a and to replica b:
   the item lists, model version and A/B variant must be identical. Then purchases: a customer's
   top item bought through `POST /events` on replica a, and replica b asked until that item has
   left its answer (seconds from the purchase; the target is 1 s).
2. Saturation, `/recommend` and the shop mix on it: one replica (wrk with 8 connections on
   replica a alone; replica b runs, idle) and two replicas (one wrk with 8 connections per
   replica, both at once, their throughputs summed): rounds alternating one/two/two/one... so
   that drifting background load hits both alike; the ratio is the median of the rounds' ratios.
3. Paced: 400 req/s in total, 200 per replica (bench_serving.paced on each replica at once, 32
   connections each with random delays); one replica alone at 200 and at 400 req/s beside it.
   Latency percentiles cannot be merged from two wrk summaries: the figure reported for two
   replicas is the worse replica's p50/p99, an upper bound of the percentile over all requests.

Every load window records the CPU seconds of each server (all its processes), of wrk (this
process's waited-for children), of Redis (its INFO cpu), of this process, and of the whole
machine (/proc/stat), plus the load average. The saturation ratio is decomposed as

    ratio = (server cores, two / one) x (server CPU per request, one / two)

so the JSON says whether the second replica was short of CPU (the load generator, Redis and other
processes share the machine's cores with the servers) or each request got dearer (contention).
`ratio_if_cpu_were_not_shared` is 2 x the second factor: the ratio two replicas reach when each
has a core as free as the one replica had. Results: benchmarks/results/replicas.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.bench_serving import (
    BENCH_KEY,
    build_shop,
    paced,
    server_cpu_seconds,
    write_inputs,
    wrk,
)
from serving.devserver import Running, serve_process

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "work" / "replicas"
RESULTS = ROOT / "benchmarks" / "results"
REDIS_URL = "redis://127.0.0.1:6379/0"

CONNECTIONS = 8  # per replica at saturation, as bench_serving's saturation runs
PACED_TOTAL = 400.0  # req/s over both replicas
TARGET_RATIO = 1.7
TARGET_P99_MS = 25.0
# both on POST /recommend: the plain requests, and the shop mix of pages (bench_serving.write_inputs)
ROUTES = {"/recommend": "recommend", "/recommend shop mix": "recommend_shop_mix"}


# -- the replicas -----------------------------------------------------------------------------------


def replica_workspace(shop: Path, dest: Path) -> Path:
    """A serving workspace over `shop`'s tables: `features/` and `validated/` linked, the change log
    and the impression log (`changes/`, `serving/`) its own and empty."""
    if dest.exists():
        shutil.rmtree(dest)  # links are removed, never followed
    dest.mkdir(parents=True)
    for name in ("features", "validated"):
        (dest / name).symlink_to((shop / name).resolve(), target_is_directory=True)
    return dest


def replica_command(bundle: Path, ws: Path, cpu: int | None) -> Callable[[int], list[str]]:
    """`shoprec serve` of a local bundle over workspace `ws`, optionally pinned to one core."""
    shoprec = str(Path(sys.executable).with_name("shoprec"))
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []

    def command(port: int) -> list[str]:
        return [*pin, shoprec, "serve", "--bundle", str(bundle), "--data", str(ws), "--port", str(port),
                "--poll-seconds", "0"]  # fmt: skip

    return command


@contextlib.contextmanager
def replicas(
    bundle: Path, ws: Path, prefix: str, cpus: list[int | None], log_dir: Path
) -> Iterator[list[Running]]:
    """Start one replica per entry of `cpus` (its core, or None), all on the same Redis prefix and
    workspace; yield them once every one answers /readyz; stop them all afterwards."""
    env = {
        "REDIS_URL": REDIS_URL,
        "SHOPREC_REDIS_PREFIX": prefix,
        "SHOPREC_API_KEY": BENCH_KEY,
        "SHOPREC_WORKERS": "1",
    }
    with contextlib.ExitStack() as stack:
        running = [
            stack.enter_context(
                serve_process(
                    replica_command(bundle, ws, cpu),
                    env=env,
                    log_path=log_dir / f"replica-{name}.log",
                    timeout_s=300,
                )
            )
            for name, cpu in zip("ab", cpus, strict=False)
        ]
        yield running


def drop_keys(prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)


# -- the same answer --------------------------------------------------------------------------------


def same_answers(a: str, b: str, bodies: Path, n: int) -> dict[str, Any]:
    """The first `n` request bodies to both replicas: how many answers agree on the item list, the
    model version and the A/B variant (every one should), and the largest score difference."""
    import httpx

    lines = bodies.read_text().splitlines()[:n]
    same_items = same_variant = same_version = 0
    score_diff = 0.0
    differing: list[dict[str, Any]] = []
    variants: dict[str, int] = {}
    with httpx.Client(timeout=30) as c:
        for line in lines:
            body = json.loads(line)
            ra, rb = (c.post(f"{url}/recommend", json=body) for url in (a, b))
            if ra.status_code != 200 or rb.status_code != 200:
                differing.append({"status": [ra.status_code, rb.status_code]})
                continue
            ja, jb = ra.json(), rb.json()
            ia, ib = ([i["item_id"] for i in j["items"]] for j in (ja, jb))
            same_items += ia == ib
            same_variant += ja["variant"] == jb["variant"]
            same_version += ja["model_version"] == jb["model_version"]
            variants[ja["variant"]] = variants.get(ja["variant"], 0) + 1
            if ia == ib:
                for x, y in zip(ja["items"], jb["items"], strict=True):
                    score_diff = max(score_diff, abs(float(x["score"]) - float(y["score"])))
            elif len(differing) < 3:
                differing.append({"context": sorted(body.get("context", {})), "a": ia, "b": ib})
    return {
        "requests": len(lines),
        "identical_items": same_items,
        "same_variant": same_variant,
        "same_model_version": same_version,
        "variants": variants,
        "max_score_difference": score_diff,
        "examples_differing": differing,
    }


def purchasers(shop: Path, n: int) -> list[str]:
    """`n` customers of the shop who consent to personalisation (a purchase changes only their
    answers: without consent the block is the same for everyone), the same ones on every run."""
    import pandas as pd

    customers = pd.read_parquet(shop / "validated" / "customers.parquet")
    return sorted(customers.loc[customers["consent_personalisation"], "user_id"].astype(str))[:n]


def purchase_visible(a: str, b: str, users: list[str], timeout_s: float = 5.0) -> dict[str, Any]:
    """For each customer: their top item on replica b, bought through `POST /events` on replica a;
    seconds until b's answer leaves it out, and whether a's next answer already did."""
    import httpx

    auth = {"Authorization": f"Bearer {BENCH_KEY}"}
    seen: list[float | None] = []
    a_at_once = 0
    with httpx.Client(timeout=30) as c:

        def items(url: str, user: str) -> list[str]:
            r = c.post(f"{url}/recommend", json={"user_id": user, "k": 10})
            r.raise_for_status()
            return [i["item_id"] for i in r.json()["items"]]

        for user in users:
            top = items(b, user)[0]
            event = {"user_id": user, "item_id": top, "event_type": "purchase", "quantity": 1}
            t0 = time.perf_counter()
            c.post(f"{a}/events", json={"events": [event]}, headers=auth).raise_for_status()
            a_at_once += top not in items(a, user)
            while top in items(b, user):
                if time.perf_counter() - t0 > timeout_s:
                    break
                time.sleep(0.01)
            else:
                seen.append(round(time.perf_counter() - t0, 3))
                continue
            seen.append(None)
    done = [s for s in seen if s is not None]
    return {
        "purchases": len(users),
        "left_a_at_once": a_at_once,
        "left_b_after_s": seen,
        "max_s": max(done) if done else None,
        "target_s": 1.0,
        "all_within_target": len(done) == len(users) and max(done) <= 1.0,
    }


# -- load and CPU accounting ------------------------------------------------------------------------


def _busy(t: Any) -> float:
    """Busy CPU seconds of the whole machine from psutil.cpu_times() (guest time is inside user)."""
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


def _redis_cpu() -> float:
    import redis

    info = redis.Redis.from_url(REDIS_URL).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _own_cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


@contextlib.contextmanager
def accounting(servers: dict[str, int]) -> Iterator[dict[str, Any]]:
    """CPU seconds over the block: each server (`name: pid`, all its processes), wrk (the children
    this process waited for: only wrk runs end inside the block), Redis, this process and the whole
    machine; as cores (seconds per wall second) too, and the load average before and after."""
    import psutil

    out: dict[str, Any] = {}
    cores = psutil.cpu_count() or 1
    load0 = os.getloadavg()
    srv0 = {k: server_cpu_seconds(p) for k, p in servers.items()}
    wrk0, self0, redis0, busy0 = (
        _own_cpu(resource.RUSAGE_CHILDREN),
        _own_cpu(resource.RUSAGE_SELF),
        _redis_cpu(),
        _busy(psutil.cpu_times()),
    )
    t0 = time.perf_counter()
    yield out
    wall = time.perf_counter() - t0
    cpu = {f"server_{k}": server_cpu_seconds(p) - srv0[k] for k, p in servers.items()}
    cpu["wrk"] = _own_cpu(resource.RUSAGE_CHILDREN) - wrk0
    cpu["redis"] = _redis_cpu() - redis0
    cpu["benchmark_process"] = _own_cpu(resource.RUSAGE_SELF) - self0
    busy = _busy(psutil.cpu_times()) - busy0
    cpu["other_processes"] = max(0.0, busy - sum(cpu.values()))
    cpu["idle"] = max(0.0, wall * cores - busy)
    out.update(
        wall_s=round(wall, 2),
        cpu_s={k: round(v, 2) for k, v in cpu.items()},
        cores_used={k: round(v / wall, 3) for k, v in cpu.items()},
        load_average_before=[round(x, 2) for x in load0],
        load_average_after=[round(x, 2) for x in os.getloadavg()],
    )


def together(calls: list[Callable[[], dict[str, Any]]]) -> list[dict[str, Any]]:
    """Run the calls (wrk runs, each on its own replica) at the same time; their results in order."""
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [f.result() for f in futures]


def combine(runs: dict[str, dict[str, Any]], cpu: dict[str, Any]) -> dict[str, Any]:
    """One figure for runs on several replicas at once: requests/s summed; the worse replica's
    percentiles (the percentile over all requests lies between the replicas' own); the servers'
    CPU per request over all of them."""
    requests = sum(r["requests"] for r in runs.values())
    server_s = sum(v for k, v in cpu["cpu_s"].items() if k.startswith("server_"))
    out: dict[str, Any] = {
        "rps": round(sum(r["rps"] for r in runs.values()), 1),
        "requests": requests,
        "errors": sum(r["errors"] for r in runs.values()),
        "p50_ms": max(r["p50_ms"] for r in runs.values()),
        "p99_ms": max(r["p99_ms"] for r in runs.values()),
        "server_cpu_ms_per_request": round(server_s * 1000 / max(requests, 1), 3),
        "server_cores": round(sum(v for k, v in cpu["cores_used"].items() if k.startswith("server_")), 3),
        "cpu": cpu,
    }
    if len(runs) > 1:
        out["percentiles"] = "the worse replica's (an upper bound of the percentile over all requests)"
        out["per_replica"] = runs
    return out


def load(
    reps: list[Running], n: int, bodies: Path, lua: Path, run: Callable[..., dict[str, Any]]
) -> dict[str, Any]:
    """`run(url, bodies, lua, pid)` on the first `n` replicas at once (POST /recommend), with the CPU
    accounting of every replica (an idle one included) around it."""
    pids = {name: r.pid for name, r in zip("ab", reps, strict=False)}
    with accounting(pids) as cpu:
        results = together([lambda r=r: run(r.url + "/recommend", bodies, lua, r.pid) for r in reps[:n]])
    return combine(dict(zip("ab", results, strict=False)), cpu)


def saturation(reps: list[Running], n: int, bodies: Path, lua: Path, seconds: float) -> dict[str, Any]:
    """wrk with CONNECTIONS connections on each of the first `n` replicas at once."""
    return load(reps, n, bodies, lua, lambda url, b, s, pid: wrk(url, b, s, seconds, CONNECTIONS, pid=pid))


def paced_each(
    reps: list[Running], n: int, bodies: Path, lua: Path, seconds: float, rate: float
) -> dict[str, Any]:
    """bench_serving.paced at `rate` req/s on each of the first `n` replicas at once."""
    out = load(reps, n, bodies, lua, lambda url, b, s, pid: paced(url, b, s, seconds, pid, rate=rate))
    out["target_rps"] = rate * n
    return out


def scaling(rounds: list[dict[str, Any]], cores: int) -> dict[str, Any]:
    """The two/one ratio (median over rounds) and what it is made of (see the module docstring)."""
    ratios = [r["two"]["rps"] / r["one"]["rps"] for r in rounds if r["one"]["rps"]]
    one_srv = statistics.median(r["one"]["server_cores"] for r in rounds)
    two_srv = statistics.median(r["two"]["server_cores"] for r in rounds)
    one_cpu = statistics.median(r["one"]["server_cpu_ms_per_request"] for r in rounds)
    two_cpu = statistics.median(r["two"]["server_cpu_ms_per_request"] for r in rounds)
    used = {
        k: round(statistics.median(r["two"]["cpu"]["cores_used"][k] for r in rounds), 3)
        for k in ("wrk", "redis", "benchmark_process", "other_processes", "idle")
    }
    one_wrk = statistics.median(r["one"]["cpu"]["cores_used"]["wrk"] for r in rounds)
    cores_factor = two_srv / one_srv if one_srv else 0.0
    cpu_factor = one_cpu / two_cpu if two_cpu else 0.0
    takers = {"wrk": used["wrk"], "Redis": used["redis"], "other processes": used["other_processes"]}
    where = (
        f"with two replicas the {cores} cores went to the servers ({two_srv:.2f}), wrk ({used['wrk']:.2f}), "
        f"Redis ({used['redis']:.2f}), other processes ({used['other_processes']:.2f}), this process "
        f"({used['benchmark_process']:.2f}) and idle ({used['idle']:.2f})"
    )
    if used["idle"] > 0.15 * cores:
        main = (
            f"not the CPU ({used['idle']:.2f} cores idle with two replicas): wrk's {CONNECTIONS} "
            "connections per replica, or the round trips to Redis"
        )
    elif cores_factor and cpu_factor and 2 / cores_factor >= 1 / cpu_factor:
        main = (
            f"the machine's cores: two replicas would need {2 * one_srv:.2f} cores to run as the one did "
            f"and got {two_srv:.2f}; the biggest other taker: {max(takers, key=takers.get)}"
        )
    else:
        main = (
            f"each request cost the servers {1 / cpu_factor:.2f}x the CPU with two replicas than with one "
            "(contention for caches and memory bandwidth, or Redis)"
        )
    limit = (
        f"{main}. The ratio = {cores_factor:.2f} (server cores two/one; 2.0 if the second replica had a "
        f"core as free as the first) x {cpu_factor:.2f} (server CPU per request one/two; 1.0 if two "
        f"replicas sharing Redis cost no more per request than one); {where}"
    )
    return {
        "one_rps": round(statistics.median(r["one"]["rps"] for r in rounds), 1),
        "two_rps": round(statistics.median(r["two"]["rps"] for r in rounds), 1),
        "ratio": round(statistics.median(ratios), 3),
        "ratio_per_round": [round(x, 3) for x in ratios],
        "server_cores_one": round(one_srv, 3),
        "server_cores_two": round(two_srv, 3),
        "server_cpu_ms_per_request_one": one_cpu,
        "server_cpu_ms_per_request_two": two_cpu,
        "ratio_decomposed": {
            "server_cores_two_over_one": round(cores_factor, 3),
            "cpu_per_request_one_over_two": round(cpu_factor, 3),
        },
        "ratio_if_cpu_were_not_shared": round(2 * cpu_factor, 3),
        "cores_two_replicas": {"servers": round(two_srv, 3), **used},
        "wrk_cores_one_replica": round(one_wrk, 3),
        "wrk_cpu_share_two_replicas": round(used["wrk"] / cores, 3),
        "limited_by": limit,
    }


# -- the run ----------------------------------------------------------------------------------------


def bench_route(
    reps: list[Running], label: str, bodies: Path, lua: Path, seconds: float, rounds: int
) -> dict[str, Any]:
    """Warm-up, saturation rounds of one and two replicas, then the paced runs, on POST /recommend
    with the request bodies in `bodies`."""
    together([lambda r=r: wrk(r.url + "/recommend", bodies, lua, max(1.0, seconds / 4), 4) for r in reps])
    runs = []
    for i in range(rounds):  # one, two | two, one | one, two ...: drift in background load hits both
        order = (1, 2) if i % 2 == 0 else (2, 1)
        got = {n: saturation(reps, n, bodies, lua, seconds) for n in order}
        runs.append({"one": got[1], "two": got[2]})
        print(
            f"  {label} saturation round {i}: one {got[1]['rps']} req/s, two {got[2]['rps']} req/s",
            flush=True,
        )
    half = PACED_TOTAL / 2
    paced_runs = {
        f"one_{half:.0f}": paced_each(reps, 1, bodies, lua, seconds, half),
        f"one_{PACED_TOTAL:.0f}": paced_each(reps, 1, bodies, lua, seconds, PACED_TOTAL),
        f"two_{PACED_TOTAL:.0f}": paced_each(reps, 2, bodies, lua, seconds, half),
    }
    for k, v in paced_runs.items():
        print(
            f"  {label} paced {k}: {v['rps']} req/s, p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms", flush=True
        )
    return {"saturation": scaling(runs, os.cpu_count() or 1), "saturation_rounds": runs, "paced": paced_runs}


def main(quick: bool = False, pin: str = "servers") -> dict[str, Any]:
    """Build (or reuse) bench_serving's shop, run both replicas, write benchmarks/results/replicas.json."""
    if shutil.which("wrk") is None:
        raise RuntimeError(
            "wrk is not installed: `apt-get install -y wrk` (the Makefile's bench target does it)"
        )
    if pin not in ("servers", "none"):
        raise ValueError(f"pin must be 'servers' or 'none', got {pin!r}")
    try:
        _redis_cpu()
    except Exception as e:
        raise RuntimeError(
            f"no Redis at {REDIS_URL} ({type(e).__name__}: {e}): the replicas share one"
        ) from e
    name, customers, items = ("quick", 500, 300) if quick else ("shop5k", 20_000, 5_000)
    seconds, rounds, checks = (3.0, 2, 100) if quick else (10.0, 3, 500)
    cores = os.cpu_count() or 1
    cpus: list[int | None] = [0, 1 % cores] if pin == "servers" else [None, None]
    result: dict[str, Any] = {
        "quick": quick,
        "seconds_per_run": seconds,
        "saturation_rounds": rounds,
        "cpus": cores,
        "pinning": (
            "replica a on core 0, replica b on core 1 (taskset); wrk, Redis and the rest unpinned"
            if pin == "servers"
            else "none"
        ),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "targets": {"saturation_ratio": TARGET_RATIO, "paced_400_p99_ms": TARGET_P99_MS},
    }
    t0 = time.perf_counter()
    bundle = build_shop(name, customers, items)
    print(f"== {name}: bundle ready in {time.perf_counter() - t0:.0f} s", flush=True)
    work = WORK / name
    inputs = write_inputs(bundle, work / "load")
    ws = replica_workspace(bundle.parent, work / "ws")
    prefix = f"shoprec-bench-replicas-{uuid.uuid4().hex[:10]}"
    result["shop"] = {"name": name, "customers": customers, "items": items, "model": "als"}
    result["replicas"] = {
        "command": "shoprec serve --bundle BUNDLE --data WS --port PORT --poll-seconds 0",
        "env": {
            "REDIS_URL": REDIS_URL,
            "SHOPREC_WORKERS": "1",
            "SHOPREC_REDIS_PREFIX": "<a prefix of this run>",
        },
        "cores": {"a": cpus[0], "b": cpus[1]},
    }
    try:
        with replicas(bundle, ws, prefix, cpus, work) as reps:
            a, b = reps[0].url, reps[1].url
            print(f"== replicas ready at {a} and {b}", flush=True)
            result["same_answer"] = same_answers(a, b, inputs["recommend_shop_mix"], checks)
            result["same_answer"]["ab_shares"] = (
                "champion=1, the default (every answer is the champion's); tests/test_replicas.py "
                "checks the same with an A/B split"
            )
            result["purchase_on_a_seen_on_b"] = purchase_visible(a, b, purchasers(bundle.parent, 5))
            print(f"  same answer: {json.dumps(result['same_answer'])}", flush=True)
            print(f"  purchase on a seen on b: {json.dumps(result['purchase_on_a_seen_on_b'])}", flush=True)
            result["routes"] = {
                route: bench_route(reps, route, inputs[key], inputs["lua"], seconds, rounds)
                for route, key in ROUTES.items()
            }
    finally:
        with contextlib.suppress(Exception):  # never hide the run's own error behind Redis's
            drop_keys(prefix)
    rec = result["routes"]["/recommend"]
    paced400 = rec["paced"][f"two_{PACED_TOTAL:.0f}"]
    result["summary"] = {
        "saturation_ratio": rec["saturation"]["ratio"],
        "saturation_ratio_shop_mix": result["routes"]["/recommend shop mix"]["saturation"]["ratio"],
        "ratio_if_cpu_were_not_shared": rec["saturation"]["ratio_if_cpu_were_not_shared"],
        "meets_ratio_target": rec["saturation"]["ratio"] >= TARGET_RATIO,
        "limited_by": rec["saturation"]["limited_by"],
        "paced_400_rps": paced400["rps"],
        "paced_400_p99_ms": paced400["p99_ms"],
        "meets_p99_target": paced400["p99_ms"] <= TARGET_P99_MS and paced400["errors"] == 0,
        "same_answers": result["same_answer"]["identical_items"] == result["same_answer"]["requests"],
        "purchase_seen_within_1s": result["purchase_on_a_seen_on_b"]["all_within_target"],
    }
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    # `--pin none` is the comparison run: it leaves the main results alone
    (RESULTS / ("replicas.json" if pin == "servers" else "replicas_nopin.json")).write_text(
        json.dumps(result, indent=2)
    )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the 300-item shop, 3 s runs, two rounds")
    parser.add_argument("--pin", choices=("servers", "none"), default="servers", help="taskset per replica")
    args = parser.parse_args()
    print(json.dumps(main(quick=args.quick, pin=args.pin)["summary"], indent=2))
