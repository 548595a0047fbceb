"""A bounded load driver: concurrent clients replaying a list of queries.

Used by the load test and by `benchmarks/serve.py`. Each query is
`("upload", png_bytes, k)` or `("id", photo_id, k)`; each answer is kept
with its latency, status and JSON body, for checking afterwards.
"""

import dataclasses
import threading
import time

try:  # Starlette's test client prefers httpx2; either has this API.
    import httpx2 as httpx
except ImportError:
    import httpx


@dataclasses.dataclass
class Answer:
    query: tuple
    status: int
    seconds: float
    body: dict | None


def ask(client: httpx.Client, query) -> Answer:
    kind, what, k = query
    started = time.perf_counter()
    if kind == "upload":
        response = client.post(
            "/api/search",
            files={"image": ("query.png", what, "image/png")},
            data={"k": str(k)},
        )
    else:
        response = client.get(f"/api/photos/{what}/similar", params={"k": k})
    seconds = time.perf_counter() - started
    try:
        body = response.json()
    except ValueError:
        body = None
    return Answer(query, response.status_code, seconds, body)


def run_load(base_url, queries, clients=8, before=None):
    """Sends `queries` from `clients` threads; the answers, in order.

    Args:
        base_url: str. The service, e.g. `http://127.0.0.1:8080`.
        queries: list of query tuples.
        clients: int. Concurrent clients, each with its own connection.
        before: callable or None. `before(n)` is called before query `n`
            is sent (e.g. to hold later queries until something happened).
    """
    answers = [None] * len(queries)
    lock = threading.Lock()
    position = [0]
    errors = []

    def client_loop():
        with httpx.Client(base_url=base_url, timeout=120) as client:
            while True:
                with lock:
                    n = position[0]
                    position[0] += 1
                if n >= len(queries):
                    return
                try:
                    if before is not None:
                        before(n)
                    answers[n] = ask(client, queries[n])
                except Exception as exc:  # Reported by the caller.
                    errors.append((n, exc))

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} queries failed: {errors[:3]}")
    return answers
