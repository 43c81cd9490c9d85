"""The sharded projection against the single-process one, in two gloo processes on the CPU."""
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow  # end to end: the command line, several processes or a Hub

WORLD = 2
# (rows, columns, unit axis, density, ties): uneven shards (rows odd), units along either axis,
# an embedding, many equal magnitudes at the cut, and a shard with fewer rows than min_per_unit
CASES = [(37, 24, 0, 1 / 8, False), (37, 24, 1, 1 / 8, False), (37, 24, None, 1 / 8, False),
         (37, 24, None, 1 / 5, True), (37, 24, 0, 1 / 5, True), (37, 24, 1, 1 / 5, True), (37, 24, 1, 1 / 40, True),
         (5, 16, 1, 1 / 16, False), (64, 40, 1, 1 / 64, False)]
MIN_PER_UNIT = 4


def _shard_rows(rows: int, rank: int) -> slice:
    """FSDP's split of dim 0: equal chunks of ceil(rows / world), the last one shorter."""
    chunk = math.ceil(rows / WORLD)
    return slice(min(rows, rank * chunk), min(rows, (rank + 1) * chunk))


def _full_tensor(rows: int, columns: int, ties: bool, seed: int) -> torch.Tensor:
    weight = torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed))
    return weight.mul(2).round().div(2) if ties else weight  # ties: magnitudes on a grid of halves, zeros too


def _worker(rank: int, init: str, results) -> None:
    from extract.projection import kept_count, kth_largest, projection_mask
    from extract.sharded import kth_largest_sharded, sharded_projection_mask

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        for case, (rows, columns, unit_axis, density, ties) in enumerate(CASES):
            full = _full_tensor(rows, columns, ties, seed=case)
            k = kept_count(full.numel(), density)
            expected = projection_mask(full, k, unit_axis, MIN_PER_UNIT)[_shard_rows(rows, rank)]
            got = sharded_projection_mask(full[_shard_rows(rows, rank)].clone(), k, unit_axis, MIN_PER_UNIT)
            assert torch.equal(got, expected), f"case {case}: {int((got != expected).sum())} entries differ"
            kth = kth_largest_sharded(full[_shard_rows(rows, rank)].abs(), k)
            assert torch.equal(kth, kth_largest(full.abs().reshape(-1), k)), f"case {case}: k-th largest"
        results.put((rank, "ok"))
        # wait for the other process before closing the group: one that closes it while the other is
        # still in its last collective aborts that one ("terminate called without an active exception")
        dist.barrier()
    except AssertionError as error:
        results.put((rank, str(error)))
    finally:
        dist.destroy_process_group()


def _store(tmp_path) -> str:
    """A file the processes meet at (a file rather than a port, so no other program can take it first)."""
    return f"file://{tmp_path / 'store'}"


def test_the_sharded_projection_is_the_single_process_projection_row_for_row(tmp_path):
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_worker, args=(_store(tmp_path), results), nprocs=WORLD, start_method="spawn")
    outcomes = dict(results.get() for _ in range(WORLD))
    assert outcomes == {0: "ok", 1: "ok"}


@pytest.mark.parametrize("k", [1, 7, 100, 888])
def test_the_radix_select_is_kthvalue_in_one_process(k, tmp_path):
    from extract.sharded import kth_largest_sharded

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        values = torch.randn(888).abs()
        values[::7] = 0.0  # zeros, as a projected tensor holds
        assert torch.equal(kth_largest_sharded(values, k), values.kthvalue(888 - k + 1).values)
    finally:
        dist.destroy_process_group()


def _fsdp_worker(rank: int, init: str, results) -> None:
    import copy

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import GPT2Config, GPT2LMHeadModel

    from extract.arch import sparse_tensors
    from extract.sparsity import project_

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)  # the same model in both processes, as FSDP expects
        # 31 positions: the position embedding's rows do not split evenly over two processes
        model = GPT2LMHeadModel(GPT2Config(vocab_size=2048, n_layer=2, n_embd=32, n_head=4, n_positions=31))
        whole = copy.deepcopy(model)
        mesh = init_device_mesh("cpu", (WORLD,))
        for block in model.transformer.h:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        sharded = sparse_tensors(model)
        assert all(type(t.param).__name__ == "DTensor" for t in sharded)
        project_(sharded, 1 / 8, MIN_PER_UNIT)
        project_(sparse_tensors(whole), 1 / 8, MIN_PER_UNIT)
        expected = dict(whole.named_parameters())
        differ = [t.name for t in sharded if not torch.equal(t.param.full_tensor(), expected[t.name])]
        results.put((rank, "ok" if not differ else f"differ: {differ}"))
        dist.barrier()  # as in _worker
    finally:
        dist.destroy_process_group()


def test_a_model_sharded_by_fsdp2_projects_to_the_single_process_weights(tmp_path):
    """torch's fully_shard (FSDP2) on the CPU with gloo. Accelerate's FSDP plugin itself needs GPUs
    (with `Accelerator(cpu=True)` it wraps the model in DDP instead)."""
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_fsdp_worker, args=(_store(tmp_path), results), nprocs=WORLD, start_method="spawn")
    assert dict(results.get() for _ in range(WORLD)) == {0: "ok", 1: "ok"}


def _fsdp_steps_worker(rank: int, init: str, results) -> None:
    """Three sparsify steps (loss, backward, RMS rescale, AdamW, projection) on a model sharded by
    fully_shard and on an unsharded copy, with the same batch in both processes."""
    import copy

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import GPT2Config, GPT2LMHeadModel

    from extract.arch import sparse_tensors
    from extract.recipe import OptimConfig
    from extract.sparsity import measured_density, project_
    from extract.train import apply_gradients

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        config = GPT2Config(vocab_size=2048, n_layer=2, n_embd=32, n_head=4, n_positions=31, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0)
        model = GPT2LMHeadModel(config)
        whole = copy.deepcopy(model)
        mesh = init_device_mesh("cpu", (WORLD,))
        for block in model.transformer.h:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        batch = torch.randint(0, 2048, (4, 31), generator=torch.Generator().manual_seed(1))
        optim = OptimConfig()
        for net in (model, whole):
            optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=optim.betas, eps=optim.eps)
            for density in (1 / 2, 1 / 4, 1 / 8):
                net(input_ids=batch, labels=batch).loss.backward()
                apply_gradients(optimizer, list(net.parameters()), optim)
                project_(sparse_tensors(net), density, MIN_PER_UNIT)
        expected = dict(whole.named_parameters())
        problems = []
        for t in sparse_tensors(model):
            full = t.param.full_tensor()
            if not torch.equal(full != 0, expected[t.name] != 0):
                problems.append(f"{t.name}: pattern")
            elif not torch.allclose(full, expected[t.name], atol=1e-6):
                problems.append(f"{t.name}: values")
        density = measured_density(sparse_tensors(model))  # counted shard by shard
        if density != measured_density(sparse_tensors(whole)):
            problems.append(f"density {density}")
        results.put((rank, "ok" if not problems else "; ".join(problems)))
        dist.barrier()  # as in _worker
    finally:
        dist.destroy_process_group()


def test_sparsify_steps_under_fsdp2_give_the_single_process_weights_and_pattern(tmp_path):
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_fsdp_steps_worker, args=(_store(tmp_path), results), nprocs=WORLD, start_method="spawn")
    assert dict(results.get() for _ in range(WORLD)) == {0: "ok", 1: "ok"}
