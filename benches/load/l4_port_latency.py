#!/usr/bin/env python3
"""How long after a LoadBalancer Service appears (or goes) its L4 port opens (or closes).

Runs `kingress run --manifests DIR --l4-services --l4-bind 127.0.0.1` on a folder, then N
times: writes a Service of type LoadBalancer (and its EndpointSlice) into the folder and
polls 127.0.0.1:PORT with connect() every 0.5 ms until it is accepted; then deletes the
file and polls until the connect is refused. The clock starts when the file is renamed
into place (an atomic write, as editors do). Loopback only; stops only what it started.

    python3 benches/load/l4_port_latency.py [--kingress target/release/kingress] [--runs 50]
"""
import argparse, os, socket, statistics, subprocess, sys, tempfile, time, urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def can_connect(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        try:
            s.connect(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait(pred, limit=10.0):
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        if pred():
            return time.perf_counter()
        time.sleep(0.0005)
    return None


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kingress", default="target/release/kingress")
    ap.add_argument("--runs", type=int, default=50)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="kingress-l4-latency-")
    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))
    backend.listen(1024)
    bport = backend.getsockname()[1]
    http, https, admin = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [a.kingress, "run", "--manifests", d, "--l4-services", "--l4-bind", "127.0.0.1",
         "--http-listen", f"127.0.0.1:{http}", "--https-listen", f"127.0.0.1:{https}",
         "--admin-listen", f"127.0.0.1:{admin}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def ready():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=0.5).status == 200
            except OSError:
                return False
        if wait(ready, 30) is None:
            sys.exit("kingress did not become ready")
        opened, closed = [], []
        for i in range(a.runs):
            port = free_port()
            svc = (f"apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: default}}\n"
                   f"spec:\n  type: LoadBalancer\n  ports:\n  - {{name: tcp, port: {port}}}\n---\n"
                   f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s{i}-1\n"
                   f"  namespace: default\n  labels: {{kubernetes.io/service-name: s{i}}}\naddressType: IPv4\n"
                   f"endpoints:\n- addresses: [127.0.0.1]\nports:\n- {{name: tcp, port: {bport}}}\n")
            path = os.path.join(d, "svc.yaml")
            t0 = time.perf_counter()
            write_atomic(path, svc)
            t1 = wait(lambda: can_connect(port))
            if t1 is None:
                sys.exit(f"run {i}: port {port} did not open within 10 s")
            opened.append((t1 - t0) * 1000)
            t0 = time.perf_counter()
            os.remove(path)
            t1 = wait(lambda: not can_connect(port))
            if t1 is None:
                sys.exit(f"run {i}: port {port} did not close within 10 s")
            closed.append((t1 - t0) * 1000)

        def summary(name, v):
            v = sorted(v)
            p = lambda q: v[min(len(v) - 1, int(round(q * (len(v) - 1))))]
            print(f"{name:<22} n={len(v)}  p50 {p(0.5):6.1f} ms  p90 {p(0.9):6.1f} ms  "
                  f"p99 {p(0.99):6.1f} ms  max {v[-1]:6.1f} ms  mean {statistics.mean(v):6.1f} ms")
        summary("Service added -> open", opened)
        summary("Service gone -> closed", closed)
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
