"""Writes the reference matting model as TorchScript whose weights are parameters.

The reference model is trained and traced with tch, which bakes its weights into the
graph as constants: fine for serving, useless for fine-tuning with tch's
TrainableCModule. This script rebuilds the same network as worker/src/reference/unet.rs
in PyTorch, loads the tch VarStore's weights.safetensors into it (parsed by hand: the
venv has no safetensors package), scripts it and saves it. The module's forward matches
model.pt: normalised RGB [B,3,H,W] in, alpha probability [B,1,H,W] out. When model.pt
sits next to the weights, the script checks that both agree before writing.

Usage: export_trainable.py MODEL_DIR OUT --height H --width W
"""

import argparse
import json
import os
import struct
import sys

import torch
import torch.nn.functional as F
from torch import nn

# Channel widths of the encoder stages, then the bottleneck (unet.rs WIDTHS).
WIDTHS = [12, 24, 48, 64, 96]
# Largest difference from model.pt tolerated before refusing to write.
TOLERANCE = 1e-4
# safetensors dtype names the reference weights may use.
DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16}


class DoubleConv(nn.Module):
    """Two 3x3 convolutions without bias, each followed by batch norm and ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        # tch's BatchNorm defaults (eps 1e-5, momentum 0.1) are PyTorch's too.
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


def upsampled_cat(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling to the skip's size, then `[upsampled, skip]` on channels."""
    size = [skip.shape[2], skip.shape[3]]
    up = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return torch.cat([up, skip], 1)


class MattingRefTrainable(nn.Module):
    """The reference U-Net; attribute names follow the tch VarStore paths."""

    def __init__(self):
        super().__init__()
        self.down0 = DoubleConv(3, WIDTHS[0])
        self.down1 = DoubleConv(WIDTHS[0], WIDTHS[1])
        self.down2 = DoubleConv(WIDTHS[1], WIDTHS[2])
        self.down3 = DoubleConv(WIDTHS[2], WIDTHS[3])
        self.bottleneck = DoubleConv(WIDTHS[3], WIDTHS[4])
        self.up3 = DoubleConv(WIDTHS[4] + WIDTHS[3], WIDTHS[3])
        self.up2 = DoubleConv(WIDTHS[3] + WIDTHS[2], WIDTHS[2])
        self.up1 = DoubleConv(WIDTHS[2] + WIDTHS[1], WIDTHS[1])
        self.up0 = DoubleConv(WIDTHS[1] + WIDTHS[0], WIDTHS[0])
        self.head = nn.Conv2d(WIDTHS[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.down0(x)
        s1 = self.down1(F.max_pool2d(s0, 2))
        s2 = self.down2(F.max_pool2d(s1, 2))
        s3 = self.down3(F.max_pool2d(s2, 2))
        x = self.bottleneck(F.max_pool2d(s3, 2))
        x = self.up3(upsampled_cat(x, s3))
        x = self.up2(upsampled_cat(x, s2))
        x = self.up1(upsampled_cat(x, s1))
        x = self.up0(upsampled_cat(x, s0))
        # model.pt returns the probability, as the manifest declares (`alpha: probability`).
        return torch.sigmoid(self.head(x))


def read_safetensors(path: str) -> dict:
    """Every tensor of a safetensors file, as float32."""
    if sys.byteorder != "little":
        raise SystemExit("safetensors data is little-endian; this host is not")
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    body = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES.get(info["dtype"])
        if dtype is None:
            raise SystemExit(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        raw = bytearray(data[body + start : body + end])
        flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(info["shape"]).to(torch.float32)
    return tensors


def load_weights(model: nn.Module, tensors: dict) -> None:
    """Loads tch's names into the module, refusing any weight left out or left over."""
    result = model.load_state_dict(tensors, strict=False)
    # tch keeps no batch counter; PyTorch uses it only when momentum is None.
    missing = [k for k in result.missing_keys if not k.endswith(".num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise SystemExit(f"weights do not fit the network: missing {missing}, unexpected {result.unexpected_keys}")


def max_difference(scripted: torch.jit.ScriptModule, traced_path: str, height: int, width: int) -> float:
    """Largest absolute difference from the traced model on a fixed random batch."""
    traced = torch.jit.load(traced_path, map_location="cpu")
    traced.eval()
    x = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (scripted(x) - traced(x)).abs().max().item()


def main() -> None:
    parser = argparse.ArgumentParser(prog="export_trainable.py", description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", help="folder holding weights.safetensors (and model.pt to check against)")
    parser.add_argument("out", help="TorchScript file to write")
    parser.add_argument("--height", type=int, required=True, help="model input height")
    parser.add_argument("--width", type=int, required=True, help="model input width")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = MattingRefTrainable()
    load_weights(model, read_safetensors(os.path.join(args.model_dir, "weights.safetensors")))
    model.eval()
    scripted = torch.jit.script(model)
    report = {"parameters": sum(p.numel() for p in scripted.parameters())}
    traced_path = os.path.join(args.model_dir, "model.pt")
    diff = max_difference(scripted, traced_path, args.height, args.width) if os.path.exists(traced_path) else None
    if diff is not None and not diff <= TOLERANCE:
        raise SystemExit(f"scripted model differs from model.pt by {diff} (tolerance {TOLERANCE})")
    report["max_abs_difference"] = diff
    scripted.save(args.out)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
