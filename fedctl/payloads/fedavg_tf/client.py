"""fedavg_tf client process: serves several virtual clients with one TF runtime and one model.

    python client.py --config C --run-dir D --token-file T --server HOST:PORT --client-ids 0,1,2

Long-polls the server for rounds that sample one of its ids (one weight download per round per
process), trains the sampled ids one after another, uploads one update per id. Exits 0 when the
server says the run finished, 4 when it failed, 1 when the server stays unreachable for
FEDTF_UNREACHABLE_S seconds (default 600).

While it trains a round, and until that round's uploads are answered, it tells the server every
FEDTF_HEARTBEAT_S seconds (default 30; 0: never) that it is still at work (GET /progress); the
server rewrites status.json then, so fedctl's budget watchdog on the server host, which cannot see
this host's GPU, does not take a long round for an idle run.

Async strategies (fedbuff, fedasync): a task is one client's, on one model version; it is trained
on a worker thread (one at a time: one model) while the poll goes on, and its upload waits out its
simulated delay on its own thread, so a slow virtual client holds up none of its siblings.

SCAFFOLD: c_i moves when the server takes the update (200), and is settled by the server's word
on which updates it aggregated (``counted`` in the next task or the final answer: a 200 left out at
the close is undone, a 409 or lost answer for an update it counted is committed); it is saved per
virtual client in the run dir and restored on restart (fedtf/scaffold_state.py), so the server's c
stays mean(c_i).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fedtf import blas  # noqa: E402 - before anything imports numpy

blas.limit_threads()

from fedtf import config, streams  # noqa: E402
from fedtf.metrics import log  # noqa: E402

EXIT_OK, EXIT_UNREACHABLE, EXIT_CONFIG, EXIT_RUN_FAILED = 0, 1, 2, 4


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="fedavg_tf federated client (virtual clients)")
    p.add_argument("--config", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--server", required=True, help="HOST:PORT")
    p.add_argument("--client-ids", required=True, help="comma list, e.g. 0,1,2")
    return p.parse_args(argv)


def parse_ids(text: str, clients: int) -> list[int]:
    try:
        ids = sorted({int(x) for x in text.split(",") if x.strip() != ""})
    except ValueError:
        raise ValueError(f"--client-ids: expected a comma list of integers, got {text!r}") from None
    bad = [i for i in ids if not 0 <= i < clients]
    if not ids or bad:
        raise ValueError(f"--client-ids: ids must be in 0..{clients - 1}, got {text!r}")
    return ids


class Client:
    is_async = False  # fedbuff / fedasync (set in __init__)

    def __init__(self, args: argparse.Namespace, cfg: dict, token: bytes, ids: list[int]) -> None:
        from fedtf import data, models, training, vectorised  # noqa: PLC0415
        from fedtf.vectorised_round import load_clients  # noqa: PLC0415
        from fedtf.realism import Realism  # noqa: PLC0415
        import numpy as np  # noqa: PLC0415
        self.np, self.cfg, self.ids, self.token, self.args = np, cfg, ids, token, args
        self.role = f"client {','.join(map(str, ids)) if len(ids) <= 8 else f'{ids[0]}..{ids[-1]}'}"
        training.configure_threads()
        training.seed_everything(cfg["seed"])
        ds = data.load_dataset(cfg["data"], cfg["seed"])
        shards = data.client_shards(ds, cfg)
        self.realism = Realism(cfg["realism"], cfg["clients"], cfg["seed"])
        input_shape = ds.x_train.shape[1:]
        model = models.build_model(cfg["model"], input_shape, ds.classes,
                                   base_dir=os.path.dirname(os.path.abspath(args.config)),
                                   mixed_precision=cfg["train"]["mixed_precision"])
        st = cfg["strategy"]
        self.is_async = config.async_config.is_async(st["name"])
        local = "fedprox" if self.is_async and st["local"] == "fedprox" else st["name"]
        self.trainer = training.Trainer(model, input_shape, cfg["train"], local, st["mu"])
        self.layout = self.trainer.layout
        # train.vectorize: the ids sampled together train as one computation (traced here)
        self.vec = vectorised.make(model, input_shape, cfg["train"], local, st["mu"],
                                   lambda m: log(self.role, m))
        self.clients, self.pool = load_clients(ds, shards, ids, self.realism, self.vec is not None)
        del ds  # only the own shards stay in memory
        first = self.clients[ids[0]]
        if self.vec is None:
            self.trainer.warmup(first.x, first.y)  # trace the train step now, not inside round 1
        self.variates = None  # SCAFFOLD's committed c_i of our ids
        if self.trainer.scaffold:
            from fedtf.scaffold_state import STATE_DIR, ControlVariates  # noqa: PLC0415
            self.variates = ControlVariates(args.run_dir, ids, self.layout.size,
                                            lambda msg, level="info": log(self.role, msg, level))
            if self.variates.restored():
                log(self.role, f"SCAFFOLD c_i of {len(self.variates.restored())} client(s) restored "
                               f"from {STATE_DIR}/")
        host, _, port = args.server.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.proc = uuid.uuid4().hex[:12]
        # async: every virtual client may wait out its simulated delay at once, none blocking another
        self.uploads = ThreadPoolExecutor(max_workers=len(ids) + 2 if self.is_async else 4,
                                          thread_name_prefix="upload")
        # async: tasks train one after another on the one model, while the poll goes on
        self.trains = ThreadPoolExecutor(max_workers=1, thread_name_prefix="train")
        self.unreachable_s = float(os.environ.get("FEDTF_UNREACHABLE_S", 600))
        self._local = threading.local()
        self.stop = threading.Event()  # set when the run is over: wakes delayed uploads
        self._after, self._inst = 0, ""  # the last task seen (its seq and server instance)
        self._sent: set = set()  # uploads not yet answered (futures)
        self._sent_lock = threading.Lock()
        self.heartbeat_s = float(os.environ.get("FEDTF_HEARTBEAT_S", 30))
        self._round: tuple[int, str] | None = None  # (seq, ids) of the round this process works on
        self._training = False
        self._wave: list = []  # async tasks not yet trained: the next wave (under _sent_lock)
        log(self.role, f"{len(ids)} virtual clients, {sum(c.n for c in self.clients.values())} examples; "
                       f"server {self.host}:{self.port}")

    # -- network ------------------------------------------------------------------------------
    def _conn(self):
        from fedtf.transport import Connection  # noqa: PLC0415
        c = getattr(self._local, "conn", None)
        if c is None or (c.host, c.port) != (self.host, self.port):
            c = self._local.conn = Connection(self.host, self.port, self.token)
        return c

    def _reread_ready(self) -> None:
        """A server restarted on this host may listen on a new port: follow its ready file."""
        ready = os.path.join(self.args.run_dir, "server.ready")
        try:
            with open(ready, encoding="utf-8") as f:
                port = int(json.load(f)["port"])
        except (OSError, ValueError, KeyError):
            return
        if port != self.port and self.host in ("127.0.0.1", "localhost", "::1"):
            log(self.role, f"server.ready names port {port}; switching from {self.port}")
            self.port = port

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 60.0,
                give_up_s: float | None = None) -> tuple[int, bytes]:
        """A request with retry and backoff while the server is unreachable or busy (503: all its
        connection slots taken), for up to `give_up_s` (default FEDTF_UNREACHABLE_S)."""
        first_fail, delay = None, 0.2
        limit = self.unreachable_s if give_up_s is None else give_up_s
        while True:
            try:
                code, reply = self._conn().request(method, path, body, timeout=timeout)
                if code != 503:
                    return code, reply
                why = "server busy (503)"
            except (OSError, http.client.HTTPException) as e:
                why = str(e) or type(e).__name__
            now = time.time()
            first_fail = first_fail or now
            if now - first_fail > limit:
                raise ConnectionError(f"server unreachable for {now - first_fail:.0f}s: {why}")
            if delay >= 1.6:
                self._reread_ready()
            if not self.is_async:  # sync: a retry after the end still learns its fate (SCAFFOLD's 409)
                time.sleep(delay)
            elif self.stop.wait(delay):  # async runs end with uploads in flight: no one to reach
                raise ConnectionError(f"the run is over ({why})")
            delay = min(delay * 2, 5.0)

    # -- main loop ----------------------------------------------------------------------------
    def run(self) -> int:
        """Poll and train until the run is over; the process's exit code."""
        if self.heartbeat_s > 0:
            threading.Thread(target=self._heartbeat, daemon=True, name="heartbeat").start()
        while True:
            rc = self.step()
            if rc is not None:
                return rc

    def step(self) -> int | None:
        """One long poll and, when it brings a round for our ids, that round's training (uploads go
        on in the background). None: go on polling; otherwise the process's exit code."""
        from fedtf.transport import TransportError, decode  # noqa: PLC0415
        ids_q = ",".join(map(str, self.ids))
        try:
            code, body = self.request(
                "GET", f"/task?after={self._after}&inst={self._inst}&ids={ids_q}&proc={self.proc}", timeout=60.0)
        except ConnectionError as e:
            log(self.role, f"giving up: {e}", "error")
            return EXIT_UNREACHABLE
        if code == 401:
            log(self.role, "server rejected the run token (401)", "error")
            return EXIT_CONFIG
        if code != 200:
            log(self.role, f"unexpected reply {code} to a task poll: {body[:200]!r}", "warning")
            time.sleep(1.0)
            return None
        try:
            msg = decode(body)
        except TransportError as e:
            log(self.role, f"bad task message: {e}", "warning")
            return None
        status = msg.meta.get("status")
        if status == "wait":
            return None
        if status in ("finished", "failed"):
            self.stop.set()
            self.trains.shutdown(wait=True, cancel_futures=True)
            self.uploads.shutdown(wait=True, cancel_futures=True)
            if self.variates is not None:  # the last round's word on which updates were aggregated
                self.variates.settle(msg.meta.get("counted"))
            log(self.role, f"server reports the run {status}; exiting")
            return EXIT_OK if status == "finished" else EXIT_RUN_FAILED
        self._after, self._inst = int(msg.meta["seq"]), str(msg.meta.get("instance", ""))
        if msg.meta.get("mode") == "async":  # one client's task: train it aside, poll on at once
            self._round = (self._after, ",".join(map(str, self.ids)))
            with self._sent_lock:
                self._wave.append((msg, len(body)))
            self._track(self.trains.submit(self.train_wave))
            return None
        self.train_round(msg, len(body))
        return None

    def _heartbeat(self) -> None:
        """Every heartbeat_s, while this process trains a round or waits for that round's answers,
        report it to the server (a report the server does not need is answered 409, and ignored)."""
        while not self.stop.wait(self.heartbeat_s):
            current = self._round
            if current is None or not (self._training or self.uploading()):
                continue
            seq, ids_q = current
            try:
                self.request("GET", f"/progress?seq={seq}&ids={ids_q}", timeout=10.0,
                             give_up_s=self.heartbeat_s)
            except ConnectionError as e:  # the poll and the uploads say what matters
                log(self.role, f"progress report not delivered: {e}", "debug")

    def uploading(self) -> int:
        """How many uploads are still waiting for the server's answer."""
        with self._sent_lock:
            return len(self._sent)

    def _submit(self, *args) -> None:
        self._track(self.uploads.submit(self._post, *args))

    def _track(self, fut) -> None:
        """Count `fut` (an upload, or an async task's training) as work not yet answered."""
        with self._sent_lock:
            self._sent.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut) -> None:
        with self._sent_lock:
            self._sent.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:  # a worker thread's error must show
            e = fut.exception()
            log(self.role, f"task failed: {type(e).__name__}: {e}", "error")

    def train_round(self, msg, download_bytes: int) -> None:
        """Train this process's sampled ids of the task `msg` and queue their uploads."""
        seq, rnd = int(msg.meta["seq"]), int(msg.meta["round"])
        c = msg.flat("c") if self.trainer.scaffold else None
        task = (str(msg.meta.get("instance", "")), seq, rnd)  # which run of which round this is
        if self.variates is not None:
            self.variates.task_seen(*task)
            self.variates.settle(msg.meta.get("counted"))  # before any c_i is read for training
        mine = [k for k in msg.meta["sampled"] if k in self.clients]
        self._round, self._training = (seq, ",".join(map(str, mine))), True
        try:
            self._train_works(self._works(msg, mine, c, task, download_bytes))
        finally:
            self._training = False

    def train_wave(self) -> None:
        """Async: train every task that has come in since the last wave, together (one
        computation when vectorised; their model versions may differ)."""
        with self._sent_lock:
            wave, self._wave = self._wave, []
        if not wave:
            return  # an earlier wave took these tasks
        works = []
        for msg, nbytes in wave:
            seq, rnd = int(msg.meta["seq"]), int(msg.meta["round"])
            task = (str(msg.meta.get("instance", "")), seq, rnd)
            works += self._works(msg, [k for k in msg.meta["sampled"] if k in self.clients], None, task, nbytes)
        self._training = True
        try:
            self._train_works(works)
        finally:
            self._training = False

    def _works(self, msg, mine: list[int], c, task, download_bytes: int) -> list:
        """The sampled ids of `msg` that do not drop out (simulated; reported at once), each with
        its rng stream and SCAFFOLD's c and c_i."""
        from fedtf.vectorised_round import Work  # noqa: PLC0415
        seq, rnd = task[1], task[2]
        global_w, works = msg.flat("w"), []
        for k in mine:
            # async: one client may train the same version twice; its ticket (seq) tells them apart
            rng = streams.client_stream(self.cfg["seed"], k, rnd, int(msg.meta.get("attempt", 0)),
                                        seq if self.is_async else None)
            if self.realism.drops_out(rng):
                self._submit(f"/drop?seq={seq}&id={k}", b"", k, 0.0)
                log(self.role, f"round {rnd}: client {k} drops out (simulated)")
                continue
            base = self.variates.base(k) if c is not None else None  # c_i as the server has counted it
            works.append(Work(k, seq, rnd, task, global_w, rng, download_bytes, c, base))
        return works

    def _train_works(self, works: list) -> None:
        """Train `works` (one at a time, or as one computation) and queue one upload each."""
        from fedtf.transport import encode  # noqa: PLC0415
        from fedtf.vectorised_round import train_works  # noqa: PLC0415
        np, lr = self.np, self.cfg["train"]["lr"]
        if not works:
            return
        for w, done in zip(works, train_works(self.trainer, self.vec, self.pool, self.clients, works)):
            vc = self.clients[w.k]
            groups = {"w": self.layout.split(done.weights)}
            dc = None
            if w.c is not None:  # SCAFFOLD option II: c_i+ = c_i - c + (x - y) / (K lr)
                c_new = w.base - w.c + (w.start - done.weights) / np.float32(self.trainer.steps(vc.n) * lr)
                dc = (c_new - w.base).astype(np.float32)
                groups["dc"] = self.layout.split(dc)  # c_i moves by dc only once the server takes it
            meta = {"client": w.k, "round": w.rnd, "seq": w.seq, "instance": w.task[0], "examples": vc.n,
                    "loss": done.loss, "train_s": round(done.train_s, 4)}
            if self.vec is not None:
                meta["vectorised"] = len(works)  # trained together with this many clients
            body_size_guess = 4 * self.layout.size * len(groups)
            delay = self.realism.delay(w.rng, w.download_bytes, body_size_guess, done.train_s, vc.slow)
            meta["simulated_delay_s"] = round(delay, 4)
            body = encode(meta, groups)
            self._submit(f"/update?seq={w.seq}&id={w.k}", body, w.k, delay, dc, w.task)

    def _post(self, path: str, body: bytes, k: int, delay: float, dc=None, task=None) -> None:
        """Send one update (or drop notice); on the server's 200, commit the update's SCAFFOLD `dc`."""
        if delay > 0 and self.stop.wait(delay):
            return  # the run ended while this (simulated) straggler was still on its way
        try:
            code, reply = self.request("POST", path, body, timeout=60.0, give_up_s=60.0)
        except ConnectionError as e:
            log(self.role, f"client {k}: upload failed: {e}", "debug" if self.stop.is_set() else "warning")
            if dc is not None:  # an earlier try may have reached the server: it will say (counted)
                self.variates.uncertain(k, dc, task)
            return
        if code != 200:
            log(self.role, f"client {k}: server answered {code}: {reply[:200].decode(errors='replace')}"
                + ("; c_i waits for the server's count" if dc is not None and code == 409 else
                   "; c_i unchanged" if dc is not None else ""), "warning")
            if dc is not None and code == 409:  # "already reported": a try whose 200 was lost got in
                self.variates.uncertain(k, dc, task)
            return
        if dc is not None:
            self.variates.commit(k, dc, task)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = config.load(args.config)
        ids = parse_ids(args.client_ids, cfg["clients"])
    except (ValueError, OSError) as e:
        log("client", f"config: {e}", "error")
        return EXIT_CONFIG
    from fedtf.transport import load_token  # noqa: PLC0415
    token = load_token(args.token_file, "client")
    if token is None:
        return EXIT_CONFIG
    try:
        client = Client(args, cfg, token, ids)
    except ValueError as e:
        log("client", str(e), "error")
        return EXIT_CONFIG
    return client.run()


if __name__ == "__main__":
    sys.exit(main())
