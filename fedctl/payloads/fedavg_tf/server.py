"""fedavg_tf server: samples clients, serves global weights, aggregates, evaluates, checkpoints.

Sync strategies run rounds here; fedbuff / fedasync run fedtf/async_loop.py (one server update per
round line) on fedtf/async_coord.py's tickets.

server.ready (the port) is written as soon as the port is bound, before TensorFlow is imported, so
that fedctl starts the clients while this process still sets up (see `bind`).

    python server.py --config C --run-dir D --token-file T [--host H] [--port P] [--resume]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # TensorFlow-free names for annotations only
    import numpy as np
    from fedtf.coordinator import RoundState

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fedtf import blas  # noqa: E402 - before anything imports numpy

blas.limit_threads()

from fedtf import checkpoint, config, streams  # noqa: E402
from fedtf.metrics import MetricsWriter, log, write_status  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 3, 2
#: a client's progress report rewrites status.json (its "time") at most this often
STATUS_EVERY_S = 1.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="fedavg_tf federated server")
    p.add_argument("--config", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    return p.parse_args(argv)


class Server:
    def __init__(self, args: argparse.Namespace, cfg: dict, token: bytes) -> None:
        from fedtf import data, models, training  # noqa: PLC0415 - TF only after the config is good
        from fedtf.coordinator import Coordinator  # noqa: PLC0415
        from fedtf.evaluation import Evaluator  # noqa: PLC0415
        from fedtf.robust import UpdateLimits  # noqa: PLC0415
        from fedtf.strategies import make_strategy  # noqa: PLC0415
        import numpy as np  # noqa: PLC0415

        self.np, self.training = np, training
        self.args, self.cfg, self.run_dir = args, cfg, os.path.abspath(args.run_dir)
        training.configure_threads()
        training.seed_everything(cfg["seed"])
        # the server needs the shard sizes (labels) and the test set, never a training example
        ds = data.load_dataset(cfg["data"], cfg["seed"], train_features=False)
        shards = data.client_shards(ds, cfg)
        input_shape = ds.x_train.shape[1:]
        self.model = models.build_model(cfg["model"], input_shape, ds.classes,
                                        base_dir=os.path.dirname(os.path.abspath(args.config)),
                                        mixed_precision=cfg["train"]["mixed_precision"])
        self.trainer = training.Trainer(self.model, input_shape, cfg["train"])
        self.layout = self.trainer.layout
        self.weights = self.layout.get()
        self.trainer.evaluate(ds.x_test[:2], ds.y_test[:2])  # trace eval before round 1
        self.evaluator = Evaluator(self.trainer, self.layout,
                                   *data.eval_subset(ds, cfg["test_subset"], cfg["seed"]))
        self.strategy = make_strategy(cfg["strategy"], self.layout.size, cfg["clients"])
        self.metrics = MetricsWriter(os.path.join(self.run_dir, "metrics.jsonl"))
        st, coord_args = cfg["strategy"], (token, self.layout.shapes, [len(s) for s in shards],
                                           self.strategy.client_extras, self.metrics,
                                           UpdateLimits.from_config(cfg["robustness"]))
        self.is_async = config.async_config.is_async(st["name"])
        if self.is_async:  # fedbuff / fedasync: tickets and model versions (fedtf/async_coord.py)
            from fedtf.async_coord import AsyncCoordinator  # noqa: PLC0415
            self.coord = AsyncCoordinator(*coord_args, concurrency=st["concurrency"],
                                          max_staleness=st["max_staleness"],
                                          ticket_timeout_s=cfg["sampling"]["round_timeout_s"])
        else:
            self.coord = Coordinator(*coord_args)
        self.client_updates = 0  # async: client updates aggregated so far
        # status.json: rewritten at each round's start and, while a round runs, when a sampled client
        # reports progress (its "time" moves): fedctl's budget watchdog on this host cannot see the
        # clients' GPUs, so that is how it knows a long round is still being worked on
        self._status: dict = {}
        self._status_at = 0.0
        self._status_lock = threading.Lock()
        self.coord.on_progress = self._progress
        self.rng = streams.sampler(cfg["seed"])
        self.start_round, self.best_acc, self.final = 1, None, (None, None)
        self.wall_before = 0.0
        self.ckpt_dir = os.path.join(self.run_dir, "checkpoint")
        self.tb = None
        if cfg["tensorboard"]:
            import tensorflow as tf  # noqa: PLC0415
            self.tb = tf.summary.create_file_writer(os.path.join(self.run_dir, "tensorboard"))
        log("server", f"{cfg['clients']} clients, {cfg['rounds']} rounds, strategy "
                      f"{cfg['strategy']['name']}, model {cfg['model']} ({self.layout.size} weights), "
                      f"data {cfg['data']['dataset']} {len(ds.y_train)} train / {len(ds.y_test)} test "
                      f"(evaluated on {self.evaluator.examples}"
                      f"{', in the background' if cfg['evaluate_in_background'] else ''}); "
                      f"dtype policy {self.model.dtype_policy.name}")

    # -- resume -------------------------------------------------------------------------------
    def restore(self) -> None:
        got = checkpoint.load(self.ckpt_dir)
        if got is None:
            log("server", "--resume given but no checkpoint found: starting from round 1", "warning")
            return
        rnd, weights, state, info = got
        if weights.shape != (self.layout.size,):
            raise SystemExit(f"checkpoint has {weights.size} weights, the model has {self.layout.size}")
        self.weights = weights
        self.strategy.load_state(state)
        self.rng.bit_generator.state = info["rng"]
        self.best_acc, self.final = info["best_accuracy"], tuple(info["final"])
        self.wall_before = info["wall_s"]
        self.start_round = rnd + 1
        if self.is_async:  # in-flight updates from before the restart are judged by this version
            self.coord.restored = rnd
            self.client_updates = int(info.get("client_updates", 0))
            self.coord.counts.update(info.get("counts", {}))
        if self.coord.counted is not None:  # SCAFFOLD: which updates the restored c holds
            got_counted = info.get("counted")
            self.coord.counted = got_counted if isinstance(got_counted, dict) else None
        done = {m["round"]: m for m in self.metrics.round_lines()}
        line = info.get("line")
        if line and info.get("eval_pending") == rnd:  # its evaluation was running in the background
            if rnd in done and done[rnd].get("eval_round") == rnd:  # it finished: count its result
                self._note_eval(done[rnd].get("loss"), done[rnd].get("accuracy"))
            else:  # it never finished: evaluate the checkpoint's model now, complete its line
                self._evaluated(rnd, line, *self.evaluator.evaluate(self.weights))
        elif line and rnd not in done:  # crashed between checkpoint and metrics line
            self.metrics.write(line)
        log("server", f"resumed from checkpoint after round {rnd}")

    # -- serving ------------------------------------------------------------------------------
    def serve(self, listener=None) -> None:
        """Serve the run's endpoints on `listener` (from `bind`; None: bind now) in a background
        thread."""
        from fedtf.endpoints import make_http_server  # noqa: PLC0415
        if listener is None:
            listener = bind(self.args, self.cfg["clients"])
        rob = self.cfg["robustness"]
        self.httpd = make_http_server(self.coord, self.args.host, 0, rob["read_timeout_s"],
                                      rob["max_connections"], listener=listener)
        threading.Thread(target=self.httpd.serve_forever, daemon=True, name="http").start()
        log("server", f"serving on {self.args.host}:{self.httpd.server_address[1]}")

    # -- rounds -------------------------------------------------------------------------------
    def wait_clients(self) -> None:
        """Client processes need a while to import TensorFlow; wait for all ids once."""
        cfg = self.cfg
        wait_s = float(os.environ.get("FEDTF_CONNECT_WAIT_S", max(cfg["sampling"]["round_timeout_s"], 300.0)))
        seen = self.coord.wait_for_clients(cfg["clients"], wait_s)
        log("server", f"{seen}/{cfg['clients']} clients connected; starting at round {self.start_round}")

    def evaluate_now(self) -> tuple[float, float]:
        """Evaluate the global model on the test set (or test_subset), in this thread; remember
        final and best accuracy."""
        self.evaluator.wait()
        loss, acc, _ = self.evaluator.evaluate(self.weights)
        self._note_eval(loss, acc)
        return loss, acc

    def _note_eval(self, loss, acc) -> None:
        self.final = (loss, acc)
        if acc is not None:
            self.best_acc = acc if self.best_acc is None else max(self.best_acc, acc)

    def _evaluated(self, r: int, line: dict, loss: float, acc: float, secs: float) -> None:
        """Round `r`'s model was evaluated (in the background thread, or at resume): complete its
        line and write it. The next metrics write waits for this (Evaluator.wait)."""
        self._note_eval(loss, acc)
        line.update(loss=loss, accuracy=acc, eval_round=r, eval_s=round(secs, 4))
        self.metrics.write(line)
        self._tensorboard(r, loss, acc, line["end"] - line["start"])
        log("server", f"round {r}/{self.cfg['rounds']} evaluated: loss {_fmt(loss)} accuracy {_fmt(acc)} "
                      f"({secs:.2f}s)")

    def save_checkpoint(self, r: int, line: dict, extra: dict) -> None:
        """Checkpoint after round (server update) `r`, with its round line and `extra` info."""
        wall = self.wall_before + time.time() - self._t_start
        checkpoint.save(self.ckpt_dir, r, self.weights, self.strategy.state(),
                        {"rng": self.rng.bit_generator.state, "best_accuracy": self.best_acc,
                         "final": list(self.final), "wall_s": wall, "line": line,
                         "counted": self.coord.counted, **extra})

    def run(self) -> int:
        cfg = self.cfg
        t_start = self._t_start = time.time()
        if self.is_async:
            from fedtf.async_loop import run_async  # noqa: PLC0415
            return run_async(self, t_start)
        m = config.samples_per_round(cfg)
        sm = cfg["sampling"]
        if self.start_round <= cfg["rounds"]:
            self.wait_clients()
        for r in range(self.start_round, cfg["rounds"] + 1):
            started = time.time()
            for attempt in range(sm["retries"] + 1):
                sampled = streams.sample(self.rng, cfg["clients"], m)
                self.coord.open_round(r, sampled, self.weights, self.strategy.broadcast(),
                                      {"rounds": cfg["rounds"], "attempt": attempt})
                self.status(round=r, rounds=cfg["rounds"], phase="training",
                            sampled=sampled, reported=[], waiting=sampled)
                self.coord.wait_round(time.time() + sm["round_timeout_s"])
                st = self.coord.close_round()
                if len(st.updates) >= sm["min_clients"]:
                    break
                msg = (f"round {r}: {len(st.updates)} updates < min_clients {sm['min_clients']} "
                       f"(attempt {attempt + 1}/{sm['retries'] + 1}; dropped {st.dropped})")
                log("server", msg, "warning")
                self.metrics.event("warning", msg, None, r)
            else:
                self.coord.settle(r, [])  # none of round r's updates will ever be aggregated
                return self.finish("failed", f"round {r}: fewer than min_clients={sm['min_clients']} "
                                   f"updates after {sm['retries'] + 1} attempts", t_start)
            self.weights = self._aggregate(r, st)
            self.coord.settle(r, sorted(st.updates))  # after the close's and the aggregate's rejections
            self.evaluator.wait()  # round r-1's evaluation writes its line before round r's
            line = {"type": "round", "round": r, "rounds": cfg["rounds"], "start": started,
                    "end": time.time(), "sampled": st.sampled, "reported": sorted(st.updates),
                    "dropped": [{"id": k, "reason": v} for k, v in sorted(st.dropped.items())],
                    "rejected": len(st.rejected),
                    "clients": {str(k): st.client_metrics[k] for k in sorted(st.updates)},
                    "loss": None, "accuracy": None, "eval_round": None, "bytes_in": st.bytes_in,
                    "bytes_out": st.bytes_out, "strategy": cfg["strategy"]["name"]}
            self._round_done(r, line, st)
        return self.finish("finished", None, t_start)

    def _round_done(self, r: int, line: dict, st: RoundState) -> None:
        """Checkpoint round `r` and write its line, evaluating its model when due: in the background
        (the next round opens at once; the line is written when the evaluation ends) unless it is
        the last round, whose accuracy the run's result is."""
        cfg = self.cfg
        due = r % cfg["evaluate_every"] == 0 or r == cfg["rounds"]
        took = f"{len(st.updates)}/{len(st.sampled)} updates ({line['end'] - line['start']:.2f}s)" + \
            (f", dropped {dict(st.dropped)}" if st.dropped else "")
        if due and cfg["evaluate_in_background"] and r < cfg["rounds"]:
            self.save_checkpoint(r, line, {"eval_pending": r})
            self.evaluator.submit(self.weights, lambda *res, r=r, line=line: self._evaluated(r, line, *res))
            log("server", f"round {r}/{cfg['rounds']}: {took}; evaluating it in the background")
            return
        if due:
            loss, acc, secs = self.evaluator.evaluate(self.weights)
            self._note_eval(loss, acc)
            line.update(loss=loss, accuracy=acc, eval_round=r, eval_s=round(secs, 4))
        self.save_checkpoint(r, line, {})
        self.metrics.write(line)
        self._tensorboard(r, line["loss"], line["accuracy"], line["end"] - line["start"])
        log("server", f"round {r}/{cfg['rounds']}: {took}, loss {_fmt(line['loss'])} "
                      f"accuracy {_fmt(line['accuracy'])}")

    def status(self, **fields) -> None:
        """Rewrite status.json with `fields` (and the time)."""
        with self._status_lock:
            self._status = fields
            write_status(self.run_dir, **fields)
            self._status_at = time.time()

    def _progress(self) -> None:
        """A sampled client reported progress (an HTTP handler thread): status.json's time moves,
        at most every STATUS_EVERY_S."""
        with self._status_lock:
            if self._status.get("phase") != "training" or time.time() - self._status_at < STATUS_EVERY_S:
                return
            try:
                write_status(self.run_dir, **self._status)
            except OSError as e:  # the next report tries again; the round goes on either way
                log("server", f"cannot rewrite status.json: {e}", "warning")
                return
            self._status_at = time.time()

    def _aggregate(self, r: int, st: RoundState) -> np.ndarray:
        """The round's new global model, never non-finite: updates that would make it so are
        taken out of the round as rejected (fedtf.robust.safe_aggregate)."""
        from fedtf.robust import safe_aggregate  # noqa: PLC0415
        updates = [st.updates[k] for k in sorted(st.updates)]
        new, left_out = safe_aggregate(self.strategy, self.weights, updates)
        for k, why in sorted(left_out.items()):
            self.coord.note_rejection(k, why, r)
            st.reject(k, why)
        if updates and len(left_out) == len(updates):
            msg = f"round {r}: no finite aggregate from any update; the global model is unchanged"
            log("server", msg, "error")
            self.metrics.event("error", msg, None, r)
        return new

    def _tensorboard(self, r: int, loss, acc, round_s: float) -> None:
        if self.tb is None:
            return
        import tensorflow as tf  # noqa: PLC0415
        with self.tb.as_default(step=r):
            if loss is not None:
                tf.summary.scalar("test/loss", loss)
                tf.summary.scalar("test/accuracy", acc)
            tf.summary.scalar("round_s", round_s)
        self.tb.flush()

    def finish(self, status: str, reason: str | None, t_start: float) -> int:
        cfg = self.cfg
        self.evaluator.wait()  # a background evaluation's line comes before the summary
        done = [m["round"] for m in self.metrics.round_lines()]
        summary = {"type": "summary", "rounds_completed": max(done, default=0),
                   "final_accuracy": self.final[1], "final_loss": self.final[0],
                   "best_accuracy": self.best_acc, "wall_s": round(self.wall_before + time.time() - t_start, 3),
                   "status": status, "reason": reason}
        if self.is_async:  # how many client updates the server updates took, how many were stale
            summary.update(client_updates=self.client_updates,
                           dropped_stale=self.coord.counts["dropped_stale"])
        self.metrics.write(summary)
        checkpoint.atomic_write_json(os.path.join(self.run_dir, "summary.json"),
                                     {**summary, "rounds": cfg["rounds"], "clients": cfg["clients"],
                                      "strategy": cfg["strategy"]["name"], "model": cfg["model"],
                                      "dataset": cfg["data"]["dataset"], "seed": cfg["seed"],
                                      "eval_examples": self.evaluator.examples})
        if status == "finished":
            self.layout.set(self.weights)
            tmp = os.path.join(self.run_dir, f".final_model.{os.getpid()}.weights.h5")
            self.model.save_weights(tmp)
            os.replace(tmp, os.path.join(self.run_dir, "final_model.weights.h5"))
        self.status(round=summary["rounds_completed"], rounds=cfg["rounds"], phase=status,
                    sampled=[], reported=[], waiting=[])
        self.coord.finish(status)
        self.coord.wait_clients_told(10.0)
        self.httpd.shutdown()
        log("server", f"run {status}" + (f": {reason}" if reason else "") +
            f"; final accuracy {_fmt(self.final[1])}", "error" if status == "failed" else "info")
        return EXIT_OK if status == "finished" else EXIT_FAILED


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def bind(args: argparse.Namespace, clients: int):
    """Listen on the run's port and write server.ready, before TensorFlow is imported.

    fedctl starts the client processes once server.ready names the port, so their start-up
    (importing TensorFlow, loading their shards, tracing) overlaps the server's own instead of
    following it: seconds off every run. Until the server serves, the clients' connections wait
    in the kernel's queue (fedtf.httpserve.listen). A resumed server takes back the port its
    clients still dial when it is free."""
    from fedtf.endpoints import fleet_defaults  # noqa: PLC0415 - numpy, no TensorFlow
    from fedtf.httpserve import listen  # noqa: PLC0415

    ready = os.path.join(args.run_dir, "server.ready")
    candidates = [args.port]
    if args.port == 0 and args.resume and os.path.exists(ready):
        try:
            with open(ready, encoding="utf-8") as f:
                candidates = [int(json.load(f)["port"]), 0]
        except (OSError, ValueError, KeyError):
            pass
    backlog = fleet_defaults(clients)[1]
    for i, port in enumerate(candidates):
        try:
            listener = listen((args.host, port), backlog)
            break
        except OSError as e:
            if i == len(candidates) - 1:
                raise SystemExit(f"cannot bind {args.host}:{port}: {e}") from e
    actual = listener.getsockname()[1]
    checkpoint.atomic_write_json(ready, {"port": actual, "pid": os.getpid()})
    log("server", f"listening on {args.host}:{actual}")
    return listener


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = config.load(args.config)
    except (ValueError, OSError) as e:
        log("server", f"config {args.config}: {e}", "error")
        return EXIT_CONFIG
    from fedtf.transport import load_token  # noqa: PLC0415
    token = load_token(args.token_file, "server")
    if token is None:
        return EXIT_CONFIG
    os.makedirs(args.run_dir, exist_ok=True)
    listener = bind(args, cfg["clients"])
    try:
        server = Server(args, cfg, token)
    except ValueError as e:  # data/model problems (e.g. too few examples for the shards)
        log("server", str(e), "error")
        return EXIT_CONFIG
    if args.resume:
        server.restore()
    server.serve(listener)
    return server.run()


if __name__ == "__main__":
    sys.exit(main())
