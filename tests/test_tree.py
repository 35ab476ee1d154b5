"""Known-answer tests: a literal small tree -> its literal mask, depths, position ids and paths."""
import pytest
import torch

from labkit import tree

#        root
#       /    \
#      0      1
#     / \      \
#    2   3      4
#    |
#    5
PARENTS = [-1, -1, 0, 0, 1, 2]


def test_depths_children_paths():
    assert tree.depths(PARENTS) == [1, 1, 2, 2, 2, 3]
    assert tree.children(PARENTS) == [[0, 1], [2, 3], [4], [5], [], [], []]
    assert tree.path_to(PARENTS, 5) == [0, 2, 5]
    assert tree.leaves(PARENTS) == [3, 4, 5]
    assert tree.paths(PARENTS) == [[0, 3], [1, 4], [0, 2, 5]]
    assert not tree.is_chain(PARENTS)
    assert tree.is_chain([-1, 0, 1]) and tree.is_chain([])


def test_position_ids():
    assert tree.position_ids(PARENTS, 10) == [10, 11, 11, 12, 12, 12, 13]


def test_ancestor_mask_literal():
    expected = torch.tensor([
        # r  0  1  2  3  4  5
        [1, 0, 0, 0, 0, 0, 0],  # root
        [1, 1, 0, 0, 0, 0, 0],  # node 0
        [1, 0, 1, 0, 0, 0, 0],  # node 1
        [1, 1, 0, 1, 0, 0, 0],  # node 2
        [1, 1, 0, 0, 1, 0, 0],  # node 3
        [1, 0, 1, 0, 0, 1, 0],  # node 4
        [1, 1, 0, 1, 0, 0, 1],  # node 5
    ], dtype=torch.bool)
    assert torch.equal(tree.ancestor_mask(PARENTS), expected)


def test_attention_mask_with_prefix_and_window():
    m = tree.attention_mask([-1, 0, -1], past=3)
    assert m.shape == (1, 1, 4, 7)
    allowed = (m[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0, 0, 1],
    ]
    assert m.min() == torch.finfo(torch.float32).min
    # window 3: a query at position p sees keys at positions p-2 .. p
    w = (tree.attention_mask([-1, 0], past=3, window=3)[0, 0] == 0).int().tolist()
    # positions: root 3, node0 4, node1 5; keys: 0 1 2 | 3 4 5
    assert w == [
        [0, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 1, 1, 1],
    ]


def test_validate_rejects_forward_parent():
    with pytest.raises(ValueError):
        tree.validate([-1, 2, 0])
    tree.validate(PARENTS)


def test_choices_roundtrip_and_bfs_order():
    parents, ranks = tree.from_choices([(1,), (0,), (0, 0), (0, 1), (1, 0), (0, 0, 0)])
    assert parents == [-1, -1, 0, 0, 1, 2]
    assert ranks == [0, 1, 0, 1, 0, 0]
    with pytest.raises(ValueError):
        tree.from_choices([(0, 1)])  # no parent path (0,)


def test_bfs_template_and_chain():
    assert tree.bfs_template([[2], [2, 1]]) == [(0,), (1,), (0, 0), (0, 1), (1, 0)]
    assert tree.chain_choices(3) == [(0,), (0, 0), (0, 0, 0)]
    assert tree.shrink([(0,), (1,), (0, 0), (0, 0, 0)], 2) == [(0,), (1,)]


def test_token_recycling_template_is_the_papers():
    from labkit.templates import best_subtree, paper_choices

    c = paper_choices()
    assert len(c) == 80 and max(len(x) for x in c) == 6
    assert [sum(1 for x in c if len(x) == d) for d in range(1, 7)] == [8, 21, 25, 15, 8, 3]
    parents, _ = tree.from_choices(c)
    tree.validate(parents)
    small = best_subtree(c, 5)
    # scores: (0,)=.45 (0,0)=.20 (1,)=.12 (0,0,0)=.09 (2,)=.06 -> BFS order
    assert small == [(0,), (1,), (2,), (0, 0), (0, 0, 0)]
    tree.from_choices(small)  # closed under parents
