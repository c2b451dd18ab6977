"""The PyTorch half of importing an nnU-Net v2 model: rebuild the network from its plans as
nnUNetPredictor does (the trainer's own `build_network_architecture`, deep supervision off),
load each fold's checkpoint into it, and export one ONNX graph that averages the folds'
logits. Needs torch and nnunetv2 (the `importers` extra); serving never imports this.
"""

import warnings
from pathlib import Path

import torch
from torch import nn

from appliance.inference.importing import ImportRefused
from appliance.inference.nnunet_import import ExportedNetwork, NnunetFolder
from appliance.inference.onnx_export import export_onnx


class FoldMean(nn.Module):
    """The folds' networks as one: their logits averaged, as nnU-Net averages folds."""

    def __init__(self, networks: list[nn.Module]) -> None:
        super().__init__()
        self.folds = nn.ModuleList(networks)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        total = self.folds[0](image)
        for network in self.folds[1:]:
            total = total + network(image)
        return total / len(self.folds)


def _network(folder: NnunetFolder, trainer_name: str) -> nn.Module:
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(folder.plans)
    configuration = plans.get_configuration(folder.configuration)
    with warnings.catch_warnings():  # nnU-Net imports every trainer module, timm's too
        warnings.filterwarnings("ignore", category=FutureWarning)
        trainer = recursive_find_python_class(
            str(Path(nnunetv2.__path__[0]) / "training" / "nnUNetTrainer"),
            trainer_name,
            "nnunetv2.training.nnUNetTrainer",
        )
    if trainer is None:
        raise ImportRefused(f"trainer {trainer_name!r} is not in this nnunetv2")
    inputs = determine_num_input_channels(plans, configuration, folder.dataset)
    outputs = plans.get_label_manager(folder.dataset).num_segmentation_heads
    network: nn.Module = trainer.build_network_architecture(
        plans, configuration, inputs, outputs, enable_deep_supervision=False
    )
    return network


def export_network(folder: NnunetFolder, onnx_path: Path) -> ExportedNetwork:
    """Load the folds' checkpoints (pickles, from the operator's folder only), check them
    against the plans, and write the averaged network to `onnx_path`."""
    networks = []
    first: dict[str, object] = {}
    for fold in folder.folds:
        try:
            checkpoint = torch.load(folder.checkpoint(fold), map_location="cpu", weights_only=False)
        except Exception as exc:  # a pickle can fail in any way
            raise ImportRefused(f"fold {fold}: the checkpoint cannot be read: {exc}") from exc
        if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
            raise ImportRefused(f"fold {fold}: not an nnU-Net checkpoint (no network_weights)")
        if not first:
            first = checkpoint
        elif checkpoint.get("trainer_name") != first.get("trainer_name"):
            raise ImportRefused(f"fold {fold} was trained by another trainer than the first")
        network = _network(folder, str(checkpoint.get("trainer_name", folder.trainer)))
        try:
            network.load_state_dict(checkpoint["network_weights"])
        except RuntimeError as exc:
            raise ImportRefused(
                f"fold {fold}: the checkpoint does not match its plans: {exc}"
            ) from exc
        networks.append(network.eval())
    init_args = first.get("init_args")
    configuration = init_args.get("configuration") if isinstance(init_args, dict) else None
    axes = first.get("inference_allowed_mirroring_axes")
    patch = [int(size) for size in folder.settings["patch_size"]]
    export_onnx(FoldMean(networks), onnx_path, [1, *patch], "image", "logits")
    return ExportedNetwork(
        trainer=str(first.get("trainer_name", folder.trainer)),
        configuration=str(configuration or folder.configuration),
        mirror_axes=tuple(int(axis) for axis in axes) if isinstance(axes, (list, tuple)) else (),
    )
