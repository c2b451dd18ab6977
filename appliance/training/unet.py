"""Small U-Nets (Ronneberger et al. 2015) in 2D and 3D, built from ONNX- and TensorRT-friendly
operations only: convolution, batch normalisation (folded at export), ReLU, max pooling,
transposed convolution and concatenation."""

import torch
from torch import nn


def _block(dims: int, channels_in: int, channels_out: int) -> nn.Sequential:
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
    return nn.Sequential(
        conv(channels_in, channels_out, 3, padding=1, bias=False),
        norm(channels_out),
        nn.ReLU(inplace=True),
        conv(channels_out, channels_out, 3, padding=1, bias=False),
        norm(channels_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(
        self, dims: int, in_channels: int, classes: int, base: int = 16, levels: int = 4
    ) -> None:
        super().__init__()
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        up = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        widths = [base * 2**level for level in range(levels)]
        self.down = nn.ModuleList()
        channels = in_channels
        for width in widths:
            self.down.append(_block(dims, channels, width))
            channels = width
        self.pool = pool(2)
        self.bottom = _block(dims, widths[-1], widths[-1] * 2)
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        channels = widths[-1] * 2
        for width in reversed(widths):
            self.up.append(up(channels, width, 2, stride=2))
            self.merge.append(_block(dims, width * 2, width))
            channels = width
        self.head = conv(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)
