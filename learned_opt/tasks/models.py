"""Modern architectures as tasks, and the ``"module"`` task a config can name.

    make_task("module", model="bn_cnn", data="mnist5k", batch_size=64)
    make_task("module", model="transformer_lm", data="stdlib_bytes", model_options={"layers": 2})
    make_task("module", model="my_package.models:make_net", data="digits", input_shape=[-1])

``model`` is a name of :data:`MODELS` or an import path (``package.module:attribute`` or
``package.module.attribute``) of a callable returning a fresh ``nn.Module``, called with
``model_options``. ``data`` is a dataset name (:data:`~learned_opt.tasks.datasets.DATASETS`) or a text
source of :data:`TEXT_SOURCES` (``data_options`` are its options, e.g. ``context``). The rest goes to
:class:`~learned_opt.tasks.module.ModuleTask`.

The models (parameter counts at the default options):

``transformer_lm``  byte-level causal transformer language model: token and position embeddings,
                    ``layers`` pre-LayerNorm blocks (causal self-attention, GELU MLP), a LayerNorm and a
                    linear head over 256 bytes (~0.14M)
``bn_cnn``          two 3x3 conv -> BatchNorm -> ReLU -> 2x2 max-pool stages, a linear head, on
                    ``(1, 28, 28)`` images (~21k)
``gru_rows``        a GRU reading an image's rows as a sequence (28 steps of 28 pixels), a linear
                    head on its last hidden state (~19k; a population loops: ``vmap`` cannot run a GRU)
``res_mlp``         a residual MLP: a linear embedding, ``blocks`` pre-LayerNorm residual blocks
                    (Linear, GELU, Linear), a LayerNorm and a linear head, on flat inputs (~1.26M)
``vit``             a small vision transformer: non-overlapping ``patch`` x ``patch`` patches, a class
                    token and position embeddings, pre-LayerNorm blocks, a linear head (~0.11M)
"""
from __future__ import annotations

import copy
import importlib
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.checks import ConfigError, check_int

from .base import check_split, randint
from .datasets import DATASETS
from .module import ModuleTask

__all__ = ["MODELS", "TEXT_SOURCES", "module_task", "resolve_model", "ByteWindows", "stdlib_bytes",
           "TransformerLM", "BNConvNet", "GRURows", "ResMLP", "ViT"]


# --------------------------------------------------------------------------- building blocks
class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``h + attn(LN(h))``, then ``h + MLP(LN(h))``."""

    def __init__(self, dim: int, heads: int, causal: bool):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"dim={dim} must be a multiple of heads={heads}")
        self.heads, self.causal = heads, causal
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, h: Tensor) -> Tensor:
        b, t, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        h = h + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return h + self.mlp(self.ln2(h))


class TransformerLM(nn.Module):
    """Byte-level causal language model; input ``(B, T)`` bytes, output ``(B, T, vocab)`` scores."""

    def __init__(self, vocab: int = 256, dim: int = 64, heads: int = 4, layers: int = 2, context: int = 64):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Parameter(torch.randn(context, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, causal=True) for _ in range(layers)])
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.ln(self.blocks(self.tok(x) + self.pos[:x.shape[-1]])))


class BNConvNet(nn.Module):
    """Conv -> BatchNorm -> ReLU -> max-pool stages on ``(C, H, W)`` images, then a linear head."""

    def __init__(self, channels: tuple[int, ...] = (16, 32), in_channels: int = 1, image: int = 28,
                 classes: int = 10):
        super().__init__()
        layers, c = [], in_channels
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
            c, image = out, image // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c * image * image, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


class GRURows(nn.Module):
    """A GRU over an image's rows (``(B, 1, H, W)`` -> H steps of W features), a head on the last state."""

    def __init__(self, hidden: int = 64, width: int = 28, classes: int = 10):
        super().__init__()
        self.gru = nn.GRU(width, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.gru(x.reshape(x.shape[0], -1, x.shape[-1]))
        return self.head(out[:, -1])


class ResMLP(nn.Module):
    """Residual MLP with LayerNorm on flat inputs: ``h + W2 GELU(W1 LN(h))`` per block."""

    def __init__(self, inputs: int = 784, width: int = 256, blocks: int = 4, classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(inputs, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.GELU(),
                                                  nn.Linear(2 * width, width)) for _ in range(blocks))
        self.ln, self.head = nn.LayerNorm(width), nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x.flatten(1))
        for block in self.blocks:
            h = h + block(h)
        return self.head(self.ln(h))


class ViT(nn.Module):
    """A small vision transformer on ``(C, H, W)`` images cut into ``patch`` x ``patch`` patches."""

    def __init__(self, patch: int = 7, image: int = 28, in_channels: int = 1, dim: int = 64, heads: int = 4,
                 layers: int = 2, classes: int = 10):
        super().__init__()
        if image % patch:
            raise ConfigError(f"patch={patch} must divide image={image}")
        self.patch, n = patch, (image // patch) ** 2
        self.embed = nn.Linear(in_channels * patch * patch, dim)
        self.cls, self.pos = nn.Parameter(torch.zeros(1, 1, dim)), nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, causal=False) for _ in range(layers)])
        self.ln, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        b, c, _, _ = x.shape
        p = self.patch
        patches = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * p * p)
        h = torch.cat([self.cls.expand(b, -1, -1), self.embed(patches)], 1) + self.pos
        return self.head(self.ln(self.blocks(h))[:, 0])


MODELS: dict[str, Callable[..., nn.Module]] = {
    "transformer_lm": TransformerLM,
    "bn_cnn": BNConvNet,
    "gru_rows": GRURows,
    "res_mlp": ResMLP,
    "vit": ViT,
}


# --------------------------------------------------------------------------- text from the Python install
_CORPUS: dict[int, Tensor] = {}


def stdlib_bytes(max_bytes: int = 2_000_000) -> Tensor:
    """The first ``max_bytes`` bytes of the standard library's own ``.py`` sources (every Python install
    has them), files in sorted order of their path under the stdlib directory, as a uint8 tensor. The
    same install gives the same bytes; another Python version gives other text."""
    check_int("max_bytes", max_bytes, 1024)
    if max_bytes not in _CORPUS:
        import sysconfig
        from pathlib import Path
        root = Path(sysconfig.get_paths()["stdlib"])
        chunks, size = [], 0
        for path in sorted(root.glob("*.py"), key=lambda p: p.name):   # top-level modules: no site-packages
            data = path.read_bytes()
            chunks.append(data)
            size += len(data)
            if size >= max_bytes:
                break
        corpus = b"".join(chunks)[:max_bytes]
        if len(corpus) < max_bytes:
            raise ConfigError(f"max_bytes={max_bytes}: the standard library at {root} has only {len(corpus)} "
                              f"bytes of top-level .py sources")
        _CORPUS[max_bytes] = torch.frombuffer(bytearray(corpus), dtype=torch.uint8).clone()
    return _CORPUS[max_bytes]


class ByteWindows:
    """A sampler of next-byte prediction windows: ``(x, y)`` = bytes ``[i, i + context)`` and
    ``[i + 1, i + context + 1)`` as int64 ``(batch, context)``, ``i`` uniform over the split (the last
    ``test_fraction`` of the corpus is the test split)."""

    name = "stdlib_bytes"

    def __init__(self, context: int = 64, max_bytes: int = 2_000_000, test_fraction: float = 0.1,
                 device: str | torch.device = "cpu"):
        self.context = check_int("context", context, 1)
        if not 0 < test_fraction < 1:
            raise ConfigError(f"test_fraction={test_fraction!r} is not allowed; allowed: a number in (0, 1)")
        corpus = stdlib_bytes(max_bytes).to(device, torch.int64)
        cut = int(len(corpus) * (1 - test_fraction))
        self.splits = {"train": corpus[:cut], "test": corpus[cut:]}
        self.device = torch.device(device)
        self.offsets = torch.arange(context + 1, device=self.device)

    def validation(self, fraction: float) -> "ByteWindows":
        """The same sampler on the training text alone: its first ``1 - fraction`` is train', its last
        ``fraction`` plays "test" (for tuning)."""
        twin = copy.copy(self)
        train = self.splits["train"]
        cut = int(len(train) * (1 - fraction))
        twin.splits = {"train": train[:cut], "test": train[cut:]}
        return twin

    def __call__(self, generator: torch.Generator, split: str, batch_size: int) -> tuple[Tensor, Tensor]:
        data = self.splits[check_split(split)]
        start = randint(len(data) - self.context - 1, (batch_size, 1), generator, self.device)
        window = data[start + self.offsets]
        return window[:, :-1], window[:, 1:]


TEXT_SOURCES: dict[str, Callable[..., Any]] = {"stdlib_bytes": ByteWindows}


# --------------------------------------------------------------------------- the "module" task
def resolve_model(model: str | Callable[..., nn.Module], options: dict | None = None) -> Callable[[], nn.Module]:
    """A factory of fresh modules: ``MODELS[model]`` or the callable at an import path, with ``options``."""
    options = dict(options or {})
    if callable(model):
        factory = model
    elif isinstance(model, str) and model in MODELS:
        factory = MODELS[model]
    elif isinstance(model, str) and ("." in model or ":" in model):
        module_name, _, attr = model.rpartition(":") if ":" in model else model.rpartition(".")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"model={model!r}: cannot import it ({e}); allowed: one of {', '.join(MODELS)} or "
                              f"an import path package.module:factory") from e
    else:
        raise ConfigError(f"model={model!r} is not allowed; allowed: one of {', '.join(MODELS)} or an import path "
                          f"package.module:factory")

    def build() -> nn.Module:
        return factory(**options)

    build.__name__ = model if isinstance(model, str) else getattr(model, "__name__", "model")
    return build


def module_task(model: str | Callable[..., nn.Module] = "bn_cnn", data: Any = "mnist5k", model_options: dict | None = None,
                data_options: dict | None = None, loss: str = "cross_entropy", batch_size: int | None = 128,
                device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32,
                input_shape: list[int] | None = None, name: str | None = None, root: str | None = None,
                eval_batches: int = 8, eval_seed: int = 0) -> ModuleTask:
    """The ``"module"`` task: see the module docstring."""
    if model_options is not None and not isinstance(model_options, dict):
        raise ConfigError(f"model_options={model_options!r} is not allowed; allowed: a mapping of the model's options")
    factory = resolve_model(model, model_options)
    if isinstance(data, str) and data in TEXT_SOURCES:
        data = TEXT_SOURCES[data](**(data_options or {}), device=device)
    elif data_options:
        raise ConfigError(f"data_options={data_options!r}: only a text source ({', '.join(TEXT_SOURCES)}) takes "
                          f"options")
    elif isinstance(data, str) and data not in DATASETS:
        raise ConfigError(f"data={data!r} is not allowed; allowed: a dataset ({', '.join(DATASETS)}) or a text "
                          f"source ({', '.join(TEXT_SOURCES)})")
    label = model if isinstance(model, str) else getattr(model, "__name__", "model")
    signature = ("module", label, repr(sorted((model_options or {}).items())), loss, str(dtype), repr(input_shape)) \
        if isinstance(model, str) else None
    data_label = data if isinstance(data, str) else (getattr(data, "name", None) or "data")
    return ModuleTask(factory, data, loss=loss, batch_size=batch_size, device=device, dtype=dtype,
                      input_shape=tuple(input_shape) if input_shape is not None else None,
                      name=name or f"{label.rsplit('.', 1)[-1].rsplit(':', 1)[-1]}_{data_label}",
                      signature=signature, root=root, eval_batches=eval_batches, eval_seed=eval_seed)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

