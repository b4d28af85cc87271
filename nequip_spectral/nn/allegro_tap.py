"""The tap of an Allegro backbone: its tensor track's last equivariant edge tensors, per atom.

Allegro keeps its equivariant features on edges, inside its tensor track, and writes only
scalars to the graph (its maintainers do not plan to expose the tensors: mir-group/allegro
issue 113). The last equivariant tensors it computes are the edge tensors that enter the last
layer's tensor product, the one that turns them into scalars: the analogue of the node
features that enter NequIP's last interaction layer, which the NequIP tap reads. A forward
pre-hook on that tensor product (``tps[-1]`` of the ``Allegro_Module``) captures them for one
call; they are summed over each centre atom's edges (they carry the two-body embedding's
polynomial cutoff already, so the sum is smooth in the positions) and normalised like
Allegro's own edge sums, giving per-atom features of degree ``L = l_max`` in e3nn's layout.
"""

import torch
from e3nn import o3
from nequip.data import AtomicDataDict
from nequip.nn import scatter


def is_allegro_module(module) -> bool:
    """An ``Allegro_Module`` (by its parts: a packaged model's classes are renamed)."""
    return hasattr(module, "tps") and hasattr(module, "num_tensor_features")


class AllegroTensorTap(torch.nn.Module):
    """Runs an ``Allegro_Module`` and writes its last equivariant edge tensors, summed per
    centre atom, as ``node_features`` (irreps ``irreps``).

    Args:
        allegro: the frozen backbone's ``Allegro_Module``
    """

    def __init__(self, allegro: torch.nn.Module):
        super().__init__()
        self.allegro = allegro
        last = allegro.tps[-1]
        self.irreps_in = allegro.irreps_in
        self.irreps = o3.Irreps([(allegro.num_tensor_features, ir) for _, ir in last.irreps_in1])

    def forward(self, data: AtomicDataDict.Type) -> AtomicDataDict.Type:
        captured = {}

        def capture(module, args):
            captured["edges"], _, captured["centers"] = args

        handle = self.allegro.tps[-1].register_forward_pre_hook(capture)
        try:
            data = self.allegro(data)
        finally:
            handle.remove()
        edges = captured["edges"]  # (edges, channels, sum of 2l+1): Allegro's strided layout
        num_atoms = AtomicDataDict.num_nodes(data)
        per_atom = scatter(edges, captured["centers"], dim=0, dim_size=num_atoms)
        blocks = per_atom.split([ir.dim for _, ir in self.allegro.tps[-1].irreps_in1], dim=-1)
        features = torch.cat([block.reshape(num_atoms, -1) for block in blocks], dim=-1)
        data[AtomicDataDict.NODE_FEATURES_KEY] = features
        return self.allegro.avg_num_neighbors_norm(data)
