"""engine.process_pool: tasks travel to the workers in guided batches (`guided_batches`), and a round
trained that way gives the same rows, steps, losses and local accuracies as the same tasks trained in
this process (`InProcessTrainer`, one thread like each worker) and as one task per message; the
finiteness check that guards a folded client (`all_finite`) agrees with `torch.isfinite(...).all()`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine import process_pool, streaming
from engine.client_trainers import FOLD_DROP, FOLD_SUM, InProcessTrainer, TrainTask, all_finite, train_settings
from engine.process_pool import ProcessPoolTrainer, guided_batches
from experiment_config import ExperimentConfig
from federated_learning import FederatedRun


@pytest.fixture(autouse=True)
def one_thread():
    """Each worker trains with one thread: this process does too, so its rows are the reference bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_run(mnist) -> FederatedRun:
    config = ExperimentConfig.from_dict({
        "model": {"name": "mlp"},
        "data": {"max_train_examples": 3_000, "max_test_examples": 200, "partition": "dirichlet"},
        "federation": {"num_clients": 50, "clients_per_round": 11, "rounds": 1, "client_holdout": 0.2},
        "system": {"num_workers": 2, "seed": 5},
    })  # fmt: skip
    return FederatedRun(config, data=mnist)


def tasks_of(run: FederatedRun, clients: range, **fields) -> list[TrainTask]:
    """One task per client, slot i, with its own seed and held-out examples (local accuracy comes back)."""
    return [
        TrainTask(slot, client, run.partitions[client], seed=100 + client, holdout=run.holdouts[client], **fields)
        for slot, client in enumerate(clients)
    ]


def pool_round(run: FederatedRun, tasks: list[TrainTask], *, folding: bool = False):
    """(outcomes, a copy of the result rows, the folded sum's values) of one pool round, pool closed."""
    settings = train_settings(run.config, 10, noise_multiplier=0.0)
    pool = ProcessPoolTrainer(run.data, settings, run.state.weights.numel(), slots=len(tasks), num_workers=2,
                              folding=folding)  # fmt: skip
    try:
        outcomes = pool.train(run.state.weights, tasks)
        return outcomes, pool.results.clone(), pool.take_sum().values
    finally:
        pool.close()


def sized_tasks(sizes: list[int]) -> list[TrainTask]:
    return [TrainTask(slot, slot, np.arange(size), seed=slot) for slot, size in enumerate(sizes)]


def test_guided_batches_keep_order_and_shrink_to_single_tasks():
    tasks = sized_tasks([60] * 100)
    batches = guided_batches(tasks, 2)
    # By hand, examples ≤ remaining / 4: 6,000/4 = 1,500 → 25 clients; 4,500/4 = 1,125 → 18; 3,420/4 = 855 → 14;
    # 2,580/4 = 645 → 10; 1,980/4 = 495 → 8; 1,500/4 = 375 → 6; 1,140/4 = 285 → 4; 900/4 → 3; 720/4 → 3;
    # 540/4 → 2; then 420/4 = 105 and less: one each.
    assert [len(b) for b in batches] == [25, 18, 14, 10, 8, 6, 4, 3, 3, 2] + [1] * 7
    assert [t for b in batches for t in b] == tasks
    assert [len(b) for b in guided_batches(tasks[:7], 4)] == [1] * 7  # fewer clients than 2 per worker
    assert guided_batches([], 2) == []
    many = guided_batches(sized_tasks([6] * 10_000), 2)
    assert len(many) < 2 * 2 * math.log2(10_000) + 10  # O(workers · log n), not n


def test_guided_batches_weigh_clients_by_their_examples():
    sizes = [12_000, 11_000, 9_000, 1_000, 2_000, 3_000, 8_000, 6_000, 4_000, 4_000]
    batches = guided_batches(sized_tasks(sizes), 2)
    # 60,000/4 = 15,000 → 12,000 alone (+11,000 is over); 48,000/4 = 12,000 → 11,000; 37,000/4 = 9,250 → 9,000;
    # 28,000/4 = 7,000 → 1,000 + 2,000 + 3,000; 22,000/4 = 5,500 → 8,000 (one at least); then one each.
    assert [[len(t.indices) for t in b] for b in batches] == [
        [12_000], [11_000], [9_000], [1_000, 2_000, 3_000], [8_000], [6_000], [4_000], [4_000]
    ]


def test_batched_pool_rows_match_this_process_bit_for_bit(mnist):
    run = small_run(mnist)
    tasks = tasks_of(run, range(3, 14))
    assert 1 < len(guided_batches(tasks, 2)) < len(tasks)  # some batches hold several clients
    local = InProcessTrainer(run.data, train_settings(run.config, 10, noise_multiplier=0.0),
                             run.state.weights.numel(), slots=len(tasks))  # fmt: skip
    expected = local.train(run.state.weights, tasks)

    outcomes, rows, _ = pool_round(run, tasks)
    assert [o.task for o in outcomes] == tasks  # the server's own tasks, in slot order
    assert all(o.task is t for o, t in zip(outcomes, tasks, strict=True))
    assert [(o.steps, o.loss, o.validation_accuracy, o.error) for o in outcomes] == [
        (o.steps, o.loss, o.validation_accuracy, o.error) for o in expected
    ]
    assert all(o.validation_accuracy is not None for o in outcomes)
    assert torch.equal(rows, local.results)
    assert not torch.equal(rows[0], run.state.weights)  # they trained
    assert len({o.loss for o in outcomes}) == len(tasks)  # clients differ: a mix-up of rows would show


def test_batched_pool_matches_one_task_per_message(mnist, monkeypatch):
    run = small_run(mnist)
    tasks = tasks_of(run, range(20, 31))
    batched, batched_rows, _ = pool_round(run, tasks)
    monkeypatch.setattr(process_pool, "BATCH_DIVISOR", 10**9)  # every batch one task: the old dispatch
    assert all(len(b) == 1 for b in guided_batches(tasks, 2))
    single, single_rows, _ = pool_round(run, tasks)
    assert [(o.task, o.steps, o.loss, o.validation_accuracy) for o in batched] == [
        (o.task, o.steps, o.loss, o.validation_accuracy) for o in single
    ]
    assert torch.equal(batched_rows, single_rows)


def test_a_folded_batched_round_sums_what_this_process_sums(mnist):
    run = small_run(mnist)
    tasks = [TrainTask(k, 30 + k, run.partitions[30 + k], seed=k, fold=FOLD_DROP if k == 4 else FOLD_SUM)
             for k in range(11)]  # fmt: skip
    local = InProcessTrainer(run.data, train_settings(run.config, 10, noise_multiplier=0.0),
                             run.state.weights.numel(), slots=len(tasks), folding=True)  # fmt: skip
    expected = local.train(run.state.weights, tasks)
    local_sum = local.take_sum().values

    outcomes, _, pooled_sum = pool_round(run, tasks, folding=True)
    assert [(o.steps, o.loss) for o in outcomes] == [(o.steps, o.loss) for o in expected]
    scalars = len(streaming.SCALARS)  # weight, examples, example·steps, clients = 10, stepless 0, aux 0
    assert pooled_sum[-scalars:].tolist() == local_sum[-scalars:].tolist()
    assert pooled_sum[-scalars + streaming.SCALARS.index("clients")] == 10
    # Which worker folds which client decides the order of float64 additions (as with one task a message).
    torch.testing.assert_close(pooled_sum, local_sum, rtol=1e-12, atol=1e-9)


def test_a_task_that_raises_in_a_worker_fails_the_round_naming_its_client(mnist):
    run = small_run(mnist)
    tasks = tasks_of(run, range(3))
    broken = [*tasks[:2], TrainTask(99, 42, run.partitions[42], seed=1)]  # slot 99: no such result row
    settings = train_settings(run.config, 10, noise_multiplier=0.0)
    pool = ProcessPoolTrainer(run.data, settings, run.state.weights.numel(), slots=3, num_workers=2)
    try:
        with pytest.raises(RuntimeError, match=r"client 42 failed in a trainer process: IndexError"):
            pool.train(run.state.weights, broken)
    finally:
        pool.close()
    assert all(not p.is_alive() for p in pool.processes)


@pytest.mark.skipif(process_pool.START_METHOD != "fork", reason="only forked trainers share this process's pages")
def test_objects_alive_at_the_fork_stay_unscanned_while_the_trainers_share_them(mnist):
    """A collection in this process must not touch the objects it shares with the forked trainers (each touched
    page is copied): they are frozen from the fork until `close`, and a collection then leaves them frozen."""
    import gc

    run = small_run(mnist)
    marker = [object()]  # alive at the fork
    before = gc.get_freeze_count()
    settings = train_settings(run.config, 10, noise_multiplier=0.0)
    pool = ProcessPoolTrainer(run.data, settings, run.state.weights.numel(), slots=3, num_workers=2)
    try:
        frozen = gc.get_freeze_count()
        gc.collect()
        assert frozen > before + 1000 and gc.get_freeze_count() == frozen
        assert not any(o is marker for o in gc.get_objects())  # frozen objects are outside every generation
        pool.train(run.state.weights, tasks_of(run, range(3)))
    finally:
        pool.close()
    assert gc.get_freeze_count() == 0 and any(o is marker for o in gc.get_objects())


@pytest.mark.parametrize(
    "values",
    [
        [0.5, -2.0, 1e-30],
        [3e38, 3e38, -1.0],  # finite, but the float32 sum overflows: the float64 sum decides
        [1.0, float("nan"), 2.0],
        [float("inf"), 1.0],
        [float("-inf"), float("inf")],  # their sum is NaN
        [-3e38, -3e38, float("nan")],
    ],
)
def test_all_finite_agrees_with_an_elementwise_check(values):
    tensor = torch.tensor(values, dtype=torch.float32)
    assert all_finite(tensor) == bool(torch.isfinite(tensor).all()) == bool(np.isfinite(values).all())
