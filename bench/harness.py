#!/usr/bin/env python3
"""Benchmarks that need processes Herald does not start itself: the side-by-side end-to-end
comparison with Kannel, and the HTTP intake under a fixed request rate.

    compare-kannel  the same load through Herald and through Kannel, alternating, medians
    api-send        POST /v1/messages at a fixed open-loop rate, then at saturation

Both use `oha` as the load generator and the `herald bench stub-server` provider stub, and
read CPU and memory of each process from /proc. Run through bench/compare-kannel.sh and
bench/api-send.sh, which install what is missing.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTH_TOKEN = "stub-auth-token"  # the stub's default, see crates/bench/src/stub.rs
ACCOUNT_SID = "ACbench00000000000000000000000000"
RECIPIENT = "+14155550100"
TEXT = "Your Herald code is 482913. It expires in 10 minutes."
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_mb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def stop(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_stub(herald, report_delay_ms, kannel_dlr_url=None):
    port = free_port()
    args = [herald, "bench", "stub-server", "--listen", f"127.0.0.1:{port}", "--report-delay-ms", str(report_delay_ms)]
    if kannel_dlr_url:
        args += ["--kannel-dlr-url", kannel_dlr_url]
    stub = subprocess.Popen(args, stdout=subprocess.DEVNULL, env=dict(os.environ, HERALD_LOG="warn"))
    wait_for_port(port)
    return stub, f"http://127.0.0.1:{port}"


def python_load(url, messages=None, duration=None, rate=None, connections=64, method="GET", headers=(), body=None):
    """A small closed-loop load generator with oha's JSON shape, for smoke runs on machines
    without oha. Its numbers are not benchmarks."""
    import concurrent.futures
    import threading
    deadline = time.time() + float(duration.rstrip("s")) if duration else None
    lock = threading.Lock()
    latencies, codes, errors = [], {}, {}
    issued = [0]

    def next_ticket():
        with lock:
            if messages is not None and issued[0] >= messages:
                return False
            if deadline is not None and time.time() >= deadline:
                return False
            issued[0] += 1
            return True

    def worker():
        while next_ticket():
            request = urllib.request.Request(url, data=body.encode() if body else None, method=method)
            for header in headers:
                name, value = header.split(":", 1)
                request.add_header(name.strip(), value.strip())
            sent = time.time()
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    response.read()
                    code = response.status
            except urllib.error.HTTPError as error:
                code = error.code
            except OSError as error:
                with lock:
                    errors[str(error)] = errors.get(str(error), 0) + 1
                continue
            with lock:
                latencies.append(time.time() - sent)
                codes[str(code)] = codes.get(str(code), 0) + 1
            if rate:
                time.sleep(workers / rate)

    workers = min(connections, 16)
    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(worker) for _ in range(workers)]:
            future.result()
    total = max(time.time() - started, 1e-9)
    latencies.sort()
    if not latencies:
        latencies.append(0.0)
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    return {
        "summary": {"total": total, "requestsPerSec": sum(codes.values()) / total, "slowest": latencies[-1]},
        "latencyPercentiles": {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)},
        "statusCodeDistribution": codes,
        "errorDistribution": errors,
    }


def drive(args, url, **kwargs):
    """Drive `url` with the chosen load generator."""
    if args.loader == "python":
        return python_load(url, **kwargs)
    return oha(args.oha, url, **kwargs)


def oha(oha_bin, url, messages=None, duration=None, rate=None, connections=64, method="GET", headers=(), body=None):
    """Run oha and return its JSON summary."""
    args = [oha_bin, "--no-tui", "--output-format", "json", "-c", str(connections), "-m", method]
    if messages:
        args += ["-n", str(messages)]
    if duration:
        args += ["-z", duration]
    if rate:
        args += ["-q", str(rate), "--latency-correction"]
    for header in headers:
        args += ["-H", header]
    if body is not None:
        args += ["-d", body]
    args.append(url)
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def real_errors(report):
    """Failed requests, leaving out those oha cut off when the run's duration ended."""
    return sum(n for kind, n in report.get("errorDistribution", {}).items() if "deadline" not in kind)


def status_codes(report):
    return {int(code): count for code, count in report.get("statusCodeDistribution", {}).items()}


def wait_until(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


# --- Herald -------------------------------------------------------------------------------


def fresh_database(args):
    """Herald's database URL for a run: a SQLite file in `work`, or a throwaway PostgreSQL
    database on the server `--postgres` names. Returns (url, cleanup)."""
    if not args.postgres:
        return None, lambda: None
    name = f"herald_harness_{os.getpid()}_{int(time.time() * 1000)}"
    subprocess.run(["psql", args.postgres, "-qc", f"CREATE DATABASE {name}"], check=True)
    base, _, _ = args.postgres.rpartition("/")
    drop = lambda: subprocess.run(["psql", args.postgres, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False)
    return f"{base}/{name}", drop



def herald_setup(herald, work, stub_url, in_flight, extra="", database_url=None):
    """A fresh database, an organization and a key; a config pointing Twilio at the stub."""
    port = free_port()
    config = os.path.join(work, "herald.toml")
    with open(config, "w") as f:
        f.write(f'''database_url = "{database_url or f'sqlite://{work}/herald.db'}"
public_url = "http://127.0.0.1:{port}"

[twilio]
account_sid = "{ACCOUNT_SID}"
auth_token = "{AUTH_TOKEN}"
base_url = "{stub_url}"
from = "+15005550006"

[dispatcher]
max_in_flight = {in_flight}
{extra}''')
    env = dict(os.environ, HERALD_CONFIG=config, HERALD_LOG="warn")
    org = json.loads(subprocess.run([herald, "org", "create", "bench", "--json"], check=True,
                                    capture_output=True, text=True, env=env, cwd=work).stdout)
    return port, env, org["live_key"]


def run_herald(args, rounds_dir):
    work = tempfile.mkdtemp(dir=rounds_dir, prefix="herald-")
    stub, stub_url = start_stub(args.herald, args.report_delay_ms)
    database_url, drop_database = fresh_database(args)
    server = None
    try:
        port, env, key = herald_setup(args.herald, work, stub_url, args.in_flight, args.herald_config, database_url)
        server = subprocess.Popen([args.herald, "serve", "--listen", f"127.0.0.1:{port}"], env=env, cwd=work,
                                  stdout=subprocess.DEVNULL)
        wait_for_port(port)
        body = json.dumps({"to": RECIPIENT, "body": TEXT})
        started = time.time()
        loaded = drive(args, f"http://127.0.0.1:{port}/v1/messages", messages=args.messages,
                   connections=args.connections, method="POST", body=body,
                   headers=[f"Authorization: Bearer {key}", "Content-Type: application/json"])
        accepted = status_codes(loaded).get(201, 0)
        if accepted != args.messages:
            raise RuntimeError(f"Herald accepted {accepted} of {args.messages}: {status_codes(loaded)}")
        stats = wait_until(lambda: (s := get_json(f"{stub_url}/stats"))["twilio_callbacks_ok"]["count"] >= args.messages and s,
                           600, "Herald's delivery reports")
        finished = time.time()
        result = measure(args.messages, loaded, started, finished, stats["twilio_submits"], stats["twilio_callbacks_ok"],
                         [server.pid])
        result["accepted_201"] = status_codes(loaded).get(201, 0)
        result["provider_submits"] = stats["twilio_submits"]["count"]
        return result
    finally:
        if server:
            stop(server)
        stop(stub)
        drop_database()
        shutil.rmtree(work, ignore_errors=True)


# --- Kannel -------------------------------------------------------------------------------


def kannel_config(work, stub_url, ports, in_flight):
    """bearerbox + smsbox tuned as PEERS.md describes: quiet, spool store, pending submits."""
    spool = os.path.join(work, "spool")
    os.makedirs(spool)
    path = os.path.join(work, "kannel.conf")
    with open(path, "w") as f:
        f.write(f'''group = core
admin-port = {ports["admin"]}
admin-password = bench
status-password = bench
smsbox-port = {ports["smsbox"]}
box-allow-ip = "127.0.0.1"
log-file = "{work}/bearerbox.log"
log-level = 4
store-type = spool
store-location = "{spool}"
dlr-storage = internal

group = smsc
smsc = http
smsc-id = stub
system-type = generic
port = {ports["smsc"]}
connect-allow-ip = "127.0.0.1"
send-url = "{stub_url}/kannel/send?to=%P&text=%b"
status-success-regex = "^Sent"
status-permfail-regex = "^Failed"
status-tempfail-regex = "^Retry"
generic-foreign-id-regex = "Sent. ID: (.+)"
max-pending-submits = {in_flight}

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {ports["smsbox"]}
sendsms-port = {ports["sendsms"]}
log-file = "{work}/smsbox.log"
log-level = 4

group = sendsms-user
username = bench
password = bench
max-messages = 1
default-sender = 15005550006
''')
    return path


def run_kannel(args, rounds_dir):
    work = tempfile.mkdtemp(dir=rounds_dir, prefix="kannel-")
    ports = {name: free_port() for name in ("admin", "smsbox", "smsc", "sendsms")}
    stub, stub_url = start_stub(args.herald, args.report_delay_ms, f"http://127.0.0.1:{ports['smsc']}/")
    config = kannel_config(work, stub_url, ports, args.in_flight)
    bearerbox = subprocess.Popen([args.bearerbox, "-v", "4", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    smsbox = None
    try:
        wait_for_port(ports["smsbox"])
        wait_for_port(ports["smsc"])
        smsbox = subprocess.Popen([args.smsbox, "-v", "4", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(ports["sendsms"])
        time.sleep(1)  # let smsbox connect to bearerbox
        dlr_url = f"{stub_url}/kannel/dlr?id=%I&type=%d"
        query = urllib.parse.urlencode({"username": "bench", "password": "bench", "to": RECIPIENT, "text": TEXT,
                                        "dlr-mask": "1", "dlr-url": dlr_url})
        started = time.time()
        loaded = drive(args, f"http://127.0.0.1:{ports['sendsms']}/cgi-bin/sendsms?{query}",
                   messages=args.messages, connections=args.connections)
        accepted = status_codes(loaded).get(202, 0)
        if accepted != args.messages:
            raise RuntimeError(f"Kannel accepted {accepted} of {args.messages}: {status_codes(loaded)}")
        stats = wait_until(lambda: (s := get_json(f"{stub_url}/stats"))["kannel_dlrs_received"]["count"] >= args.messages and s,
                           600, "Kannel's delivery reports")
        finished = time.time()
        result = measure(args.messages, loaded, started, finished, stats["kannel_submits"], stats["kannel_dlrs_received"],
                         [bearerbox.pid, smsbox.pid])
        result["accepted_202"] = status_codes(loaded).get(202, 0)
        result["provider_submits"] = stats["kannel_submits"]["count"]
        return result
    finally:
        if smsbox:
            stop(smsbox)
        stop(bearerbox)
        stop(stub)
        shutil.rmtree(work, ignore_errors=True)


# --- measuring ----------------------------------------------------------------------------


def time_wait_sockets():
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                count += sum(1 for line in f if line.split()[3:4] == ["06"])
        except OSError:
            pass
    return count


def settle(limit=2000, timeout=75):
    """Let the previous run's closed connections drain, so one run does not slow the next.
    Kannel's HTTP interfaces close a connection per request, leaving tens of thousands of
    sockets in TIME_WAIT, which Linux keeps for 60 s; waiting less slowed every later round."""
    deadline = time.time() + timeout
    while time_wait_sockets() > limit and time.time() < deadline:
        time.sleep(1)


def rate(counter):
    span = max(counter["last_us"] - counter["first_us"], 1) / 1e6
    return counter["count"] / span


def measure(messages, load, started, finished, submits, reports, pids):
    accepted_seconds = load["summary"]["total"]
    return {
        "accepted_per_second": messages / accepted_seconds,
        "handed_to_provider_per_second": rate(submits),
        "delivery_reports_per_second": rate(reports),
        "end_to_end_per_second": messages / (reports["last_us"] / 1e6 - started),
        "end_to_end_seconds": reports["last_us"] / 1e6 - started,
        "cpu_seconds": sum(cpu_seconds(pid) for pid in pids),
        "rss_mb": sum(memory_mb(pid, "VmRSS") for pid in pids),
        "peak_rss_mb": sum(memory_mb(pid, "VmHWM") for pid in pids),
        "request_p99_ms": load["latencyPercentiles"]["p99"] * 1000,
        "wall_seconds": finished - started,
    }


def compare_kannel(args):
    rounds_dir = tempfile.mkdtemp(prefix="herald-kannel-")
    runs = {"herald": [], "kannel": []}
    try:
        for round_ in range(args.rounds):
            for system, run in (("herald", run_herald), ("kannel", run_kannel)):
                if args.only and args.only != system:
                    continue
                settle()
                result = run(args, rounds_dir)
                runs[system].append(result)
                print(f"round {round_ + 1} {system:6}: accepted {result['accepted_per_second']:8.0f}/s  "
                      f"to provider {result['handed_to_provider_per_second']:8.0f}/s  "
                      f"reports {result['delivery_reports_per_second']:8.0f}/s  "
                      f"end to end {result['end_to_end_per_second']:8.0f}/s  "
                      f"cpu {result['cpu_seconds']:5.1f} s  rss {result['rss_mb']:5.1f} MB", file=sys.stderr)
    finally:
        shutil.rmtree(rounds_dir, ignore_errors=True)
    if args.only:
        return
    keys = [k for k in runs["herald"][0] if isinstance(runs["herald"][0][k], (int, float))]
    medians = {system: {k: statistics.median(r[k] for r in results) for k in keys if all(k in r for r in results)}
               for system, results in runs.items()}
    ratio = medians["herald"]["end_to_end_per_second"] / medians["kannel"]["end_to_end_per_second"]
    summary = {"messages": args.messages, "rounds": args.rounds, "connections": args.connections,
               "in_flight": args.in_flight, "report_delay_ms": args.report_delay_ms,
               "herald": medians["herald"], "kannel": medians["kannel"], "end_to_end_ratio": ratio, "runs": runs}
    print(json.dumps(summary) if args.json else table(summary))


def table(summary):
    rows = [("", "herald", "kannel")]
    for key in ("accepted_per_second", "handed_to_provider_per_second", "delivery_reports_per_second",
                "end_to_end_per_second", "end_to_end_seconds", "cpu_seconds", "rss_mb", "peak_rss_mb", "request_p99_ms"):
        rows.append((key, f"{summary['herald'][key]:.1f}", f"{summary['kannel'][key]:.1f}"))
    lines = [f"{a:32}{b:>12}{c:>12}" for a, b, c in rows]
    lines.append(f"median of {summary['rounds']} alternating rounds, {summary['messages']} messages each; "
                 f"end-to-end ratio herald/kannel = {summary['end_to_end_ratio']:.2f}")
    return "\n".join(lines)


# --- api-send -----------------------------------------------------------------------------


def api_send(args):
    work = tempfile.mkdtemp(prefix="herald-api-")
    port = free_port()
    database_url, drop_database = fresh_database(args)
    env = dict(os.environ, HERALD_LOG="warn", HERALD_DATABASE_URL=database_url or f"sqlite://{work}/herald.db")
    env.pop("HERALD_CONFIG", None)
    org = json.loads(subprocess.run([args.herald, "org", "create", "bench", "--json"], check=True,
                                    capture_output=True, text=True, env=env, cwd=work).stdout)
    server = subprocess.Popen([args.herald, "serve", "--listen", f"127.0.0.1:{port}"], env=env, cwd=work,
                              stdout=subprocess.DEVNULL)
    results = {}
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/v1/messages"
        headers = [f"Authorization: Bearer {org['live_key']}", "Content-Type: application/json"]
        body = json.dumps({"to": RECIPIENT, "body": TEXT})
        for name, kwargs in (("fixed_rate", {"duration": args.duration, "rate": args.rate, "connections": 256}),
                             ("saturation", {"duration": args.duration, "connections": args.connections})):
            cpu_before = cpu_seconds(server.pid)
            loaded = drive(args, url, method="POST", headers=headers, body=body, **kwargs)
            codes = status_codes(loaded)
            percentiles = loaded["latencyPercentiles"]
            results[name] = {
                "requests_per_second": loaded["summary"]["requestsPerSec"],
                "p50_ms": percentiles["p50"] * 1000,
                "p90_ms": percentiles["p90"] * 1000,
                "p99_ms": percentiles["p99"] * 1000,
                "max_ms": loaded["summary"]["slowest"] * 1000,
                "created_201": codes.get(201, 0),
                "errors": sum(c for code, c in codes.items() if code != 201) + real_errors(loaded),
                "server_cpu_seconds": cpu_seconds(server.pid) - cpu_before,
                "server_rss_mb": memory_mb(server.pid, "VmRSS"),
                "parameters": {k: v for k, v in kwargs.items()},
            }
    finally:
        stop(server)
        drop_database()
        shutil.rmtree(work, ignore_errors=True)
    failed = sum(r["errors"] for r in results.values())
    if args.json:
        print(json.dumps(results))
    else:
        for name, r in results.items():
            print(f"{name:11} {r['requests_per_second']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  p90 {r['p90_ms']:6.2f} ms  "
                  f"p99 {r['p99_ms']:6.2f} ms  max {r['max_ms']:7.2f} ms  201s {r['created_201']}  errors {r['errors']}  "
                  f"server cpu {r['server_cpu_seconds']:.1f} s  rss {r['server_rss_mb']:.1f} MB")
    if failed:
        sys.exit(f"{failed} requests failed")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--herald", default=os.path.join(ROOT, "target", "release", "herald"))
    common.add_argument("--json", action="store_true", help="print one JSON object")
    common.add_argument("--loader", choices=["oha", "python"], help="load generator (default: oha if installed)")
    common.add_argument("--postgres", metavar="ADMIN_URL",
                        help="run Herald on a throwaway PostgreSQL database on this server instead of SQLite")
    commands = parser.add_subparsers(dest="command", required=True)
    kannel = commands.add_parser("compare-kannel", parents=[common])
    kannel.add_argument("--messages", type=int, default=20000)
    kannel.add_argument("--rounds", type=int, default=3)
    kannel.add_argument("--connections", type=int, default=64)
    kannel.add_argument("--in-flight", type=int, default=100)
    kannel.add_argument("--report-delay-ms", type=int, default=500)
    kannel.add_argument("--herald-config", default="", help="extra TOML for Herald's configuration file")
    kannel.add_argument("--only", choices=["herald", "kannel"], help="run one system only")
    kannel.add_argument("--bearerbox", default=shutil.which("bearerbox") or "/usr/sbin/bearerbox")
    kannel.add_argument("--smsbox", default=shutil.which("smsbox") or "/usr/sbin/smsbox")
    api = commands.add_parser("api-send", parents=[common])
    api.add_argument("--rate", type=int, default=2000)
    api.add_argument("--duration", default="30s")
    api.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    args.herald = os.path.abspath(args.herald)
    args.oha = shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")
    if args.loader is None:
        args.loader = "oha" if os.path.exists(args.oha) else "python"
        if args.loader == "python":
            print("oha not found: using the built-in Python loader (a smoke run, not a benchmark)", file=sys.stderr)
    {"compare-kannel": compare_kannel, "api-send": api_send}[args.command](args)


if __name__ == "__main__":
    main()
