import torch

from multidgd.representation import RepresentationTable


def test_row_adam_equals_torch_adam_on_full_table():
    torch.manual_seed(0)
    init = torch.randn(6, 3)
    table = RepresentationTable(init)
    ref = torch.nn.Parameter(init.clone())
    opt = torch.optim.Adam([ref], lr=0.01, betas=(0.5, 0.7), weight_decay=1e-4)
    for _step in range(5):
        grad = torch.randn(6, 3)
        table.accumulate(torch.arange(6), grad)
        table.step(lr=0.01, betas=(0.5, 0.7), weight_decay=1e-4)
        opt.zero_grad()
        ref.grad = grad.clone()
        opt.step()
        torch.testing.assert_close(table.values, ref.detach(), rtol=1e-6, atol=1e-7)


def test_untouched_rows_stay():
    table = RepresentationTable(torch.ones(5, 2))
    table.accumulate(torch.tensor([1, 3]), torch.ones(2, 2))
    table.step(lr=0.1, betas=(0.5, 0.7), weight_decay=0.0)
    assert torch.equal(table.values[[0, 2, 4]], torch.ones(3, 2))
    assert torch.all(table.values[[1, 3]] < 1.0)
    assert table.steps.tolist() == [0, 1, 0, 1, 0]
    # a second step with no gradient changes nothing
    before = table.values.clone()
    table.step(lr=0.1, betas=(0.5, 0.7), weight_decay=0.0)
    assert torch.equal(before, table.values)


def test_accumulates_repeated_rows():
    table = RepresentationTable(torch.zeros(3, 1))
    table.accumulate(torch.tensor([0, 0]), torch.tensor([[1.0], [2.0]]))
    assert table.grad[0, 0] == 3.0
