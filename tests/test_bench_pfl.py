"""bench/pfl.py's own computations, without pfl: the shared set-up, the accuracy, the loss, the table.

The set-up must give both sides the engine's own partition, data and initial weights; the pfl side's CNN
must compute the engine's loss; the accuracy must be the engine's; the summary must be what the rows say.
"""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch

from bench import pfl as bench
from engine import objectives
from federated_learning import FederatedRun, evaluate
from model import create_model, flatten, get_parameters


def test_shared_inputs_are_the_engines_set_up_and_survive_the_file(mnist, tmp_path):
    config = bench.engine_config("small", rounds=1, workers=1, examples=6)  # 1,000 clients × 6 examples
    inputs = bench.shared_inputs(config, mnist)
    run = FederatedRun(config, data=mnist)  # the engine side builds this itself
    bench.write_inputs(tmp_path, inputs)
    read = bench.read_inputs(tmp_path)

    assert len(read.partitions) == 1_000 and {len(p) for p in read.partitions} == {6}
    assert all(np.array_equal(a, b) for a, b in zip(read.partitions, run.partitions, strict=True))
    assert len(np.unique(np.concatenate(read.partitions))) == 6_000  # disjoint clients
    assert torch.equal(read.initial, run.state.weights)
    assert torch.equal(read.initial, flatten(get_parameters(create_model("cnn", seed=0))))
    assert torch.equal(flatten(get_parameters(bench.initial_model(read.initial))), run.state.weights)
    # The pfl side's data is the engine's: the same subset of the same images, the whole test set.
    side = bench.side_data(mnist, "small", 6)
    assert torch.equal(side.train_x, run.data.train_x) and torch.equal(side.train_y, run.data.train_y)
    assert torch.equal(side.test_y, mnist.test_y) and len(side.train_y) == 6_000


def test_the_big_setup_is_ten_clients_of_six_thousand(mnist):
    config = bench.engine_config("big", rounds=1, workers=1)
    assert (config.federation.num_clients, config.federation.clients_per_round) == (10, 10)
    inputs = bench.shared_inputs(config, mnist)
    assert [len(p) for p in inputs.partitions] == [6_000] * 10
    assert bench.side_data(mnist, "big", 0).train_x is mnist.train_x  # no subset: all 60,000


def test_accuracy_is_the_engines_evaluation(mnist):
    model = create_model("cnn", seed=3)
    x, y = mnist.test_x[:1_500], mnist.test_y[:1_500]
    engine_accuracy, _ = evaluate(model, x, y)
    assert bench.test_accuracy(model, x, y, batch_size=400) == engine_accuracy
    by_hand = int((model(x).argmax(1) == y).sum()) / len(y)
    assert abs(bench.test_accuracy(model, x, y) - by_hand) < 1e-9


def test_the_pfl_module_is_the_cnn_with_the_engines_loss(mnist):
    net = create_model("cnn", seed=1)
    module = bench.PflCNN(net, metric=lambda value, weight: (value, weight))
    x, y = mnist.train_x[:32], mnist.train_y[:32]
    assert torch.equal(module(x), net(x))
    torch.testing.assert_close(module.loss(x, y), objectives.TaskLoss()(net(x), y))
    total, count = module.metrics(x, y)["loss"]
    assert count == 32 and abs(total / 32 - float(objectives.TaskLoss()(net(x), y).detach())) < 1e-4


def test_round_clock_writes_one_line_a_round(mnist, tmp_path):
    out = tmp_path / "rounds.jsonl"
    clock = bench.RoundClock(mnist.test_x[:200], mnist.test_y[:200], out, metrics_type=dict)
    model = Namespace(pytorch_model=create_model("cnn", seed=0))
    assert clock.on_train_begin(model=model) == {}
    clock.after_central_iteration({}, model, central_iteration=0)
    clock.after_central_iteration({}, model, central_iteration=1)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = bench.test_accuracy(model.pytorch_model, mnist.test_x[:200], mnist.test_y[:200])
    assert [r["round"] for r in rows] == [1, 2] and {r["accuracy"] for r in rows} == {expected}
    assert all(r["seconds"] >= 0 for r in rows)


def test_summary_table_and_gap_from_known_results():
    results = [
        bench.SideResult("engine", [4.0, 2.0, 3.0], [0.5, 0.8, 0.9], 20.0, 2 * 2**30),
        bench.SideResult("pfl", [5.0, 1.0, 6.0], [0.52, 0.79, 0.9], 30.0, 2**30),
        bench.SideResult("engine", [1.0, 5.0, 6.0], [0.7, 0.8, 0.95], 22.0, 3 * 2**30),
        bench.SideResult("pfl", [2.0, 3.0, 4.0], [0.6, 0.81, 0.9], 31.0, 2**29),
    ]
    rows = bench.summary_rows(results)
    # engine: rounds 4, 2, 3, 1, 5, 6 -> median 3.5; steady 2, 3, 5, 6 -> 4.0; wall median 21.0; peak 3 GB;
    # accuracy medians 60, 80, 92.5
    assert rows[0] == ["engine", "3.50 (1.00–6.00)", "4.00 (2.00–6.00)", "21.0", "3.00", "60.00 80.00 92.50"]
    assert rows[1] == ["pfl", "3.50 (1.00–6.00)", "3.50 (1.00–6.00)", "30.5", "1.00", "56.00 80.00 90.00"]
    assert bench.steady_seconds([bench.SideResult("pfl", [9.0], [0.1], 1.0, 1)]) == [9.0]  # one round: itself
    assert abs(bench.accuracy_gap(results) - 4.0) < 1e-9  # round 1: 60 vs 56
    table = bench.format_table(["side", "s"], [["engine", "1"], ["pfl", "22"]]).splitlines()
    assert table == ["side    s", "engine  1", "pfl     22"]


def test_pfl_workers_meet_on_loopback():
    args = Namespace(data_dir="d", rounds=2, examples=0, pfl_threads=0, pfl_workers=2, engine_workers=0)
    commands = bench.side_commands("pfl", "py", Path("/tmp/x"), args, "small")
    assert [env["PFL_WORKER_RANK"] for _, env in commands] == ["0", "1"]
    addresses = commands[0][1]["PFL_WORKER_ADDRESSES"].split(",")
    assert len(addresses) == 2 and all(a.startswith("127.0.0.1:") for a in addresses)
    assert commands[0][0][:5] == ["py", "-m", "bench.pfl", "--side", "pfl"]
    ((engine_argv, engine_env),) = bench.side_commands("engine", "py", Path("/tmp/x"), args, "small")
    assert engine_env == {} and "--engine-workers" in engine_argv
