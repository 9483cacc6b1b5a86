"""A small per-parameter MLP optimizer whose update is normalised per tensor at every step.

The general-purpose rule, in the spirit of Celo/Celo2 (a tiny MLP update rule,
RMS-normalised output) and of Metz et al.'s per-parameter MLP optimizers. For every parameter
tensor ``w`` with gradient ``g`` (``t`` = ``state["step"]``, the number of updates made before
this one; ``H`` = the horizon given to :meth:`NormalizedMLPOptimizer.init`, if any)::

    m_d  <- d * m_d + (1 - d) * g                 for each d in ``decays``      (momenta)
    v_b  <- b * v_b + (1 - b) * g^2               for each b in ``rms_decays``  (second moments)
    feats = [g, w, m_d..., g / sqrt(v_b + eps)..., m_d / sqrt(v_b + eps)...]   (per coordinate)
    feats <- feats / sqrt(mean_over_tensor(feats^2) + eps)     (each feature normalised over the tensor)
    time  = [tanh(t / s) for s in step_timescales] + [min(t / H, 1), 1]   ([..., 0, 0] without H)
    x     = [feats, time]
    d     = skip . x + MLP(x)[0]                                (direction, per coordinate)
    d    <- orth(d)                                             (only with orthogonalize, tensors with >= 2
                                                                 dims: the nearest semi-orthogonal matrix)
    u     = d / sqrt(mean_over_tensor(d^2) + eps)               (unit RMS over the tensor; u = d with
                                                                 output_norm=False, the ablation)
    s     = 2 * sigmoid(mean_over_tensor(MLP(x)[1]))            (only with magnitude=True; else 1;
                                                                 exp(r * tanh(.)) with magnitude_log_range=r)
    w    <- w * (1 - step_mult * lr * weight_decay) - step_mult * lr * exp(log_scale) * s * u * rho * exp(l)
    rho   = 1, or with relative_step: sqrt(mean_over_tensor(w^2) + 1e-12)   (steps relative to w's size)
    l     = 0, or with hypergradient > 0 a per-tensor log step size adapted online (below)

So with ``magnitude=False`` the root mean square of every tensor's step is exactly
``step_mult * lr * exp(log_scale)``, whatever the gradient's scale; ``magnitude=True`` adds a
learned per-tensor step size in ``(0, 2)`` times that (a learned schedule: it sees the step and
fraction-of-horizon features). All features are normalised, so the step does not depend on
the scale of the gradient or of the parameters (for RMS values well above ``sqrt(eps)``).

``orthogonalize=True`` (as Celo2 does for hidden-layer matrices): each tensor with at least two dims
is seen as a matrix ``(shape[0], rest)`` and its direction replaced by the nearest semi-orthogonal
matrix ``U V^T`` (``d = U S V^T``), computed by the quintic Newton-Schulz iteration of Muon
(:func:`orthogonalize`, 5 steps; singular values above ~1/100 of the largest end within about
[0.7, 1.2], smaller ones grow ~500x), before the
per-tensor normalisation. Every direction in the matrix then moves by the same amount.

``hypergradient=beta > 0``: a per-tensor step size adapted online by the sign of the hypergradient
(Baydin et al. 2018, in log space, made free of scale and size). With ``u'`` the tensor's previous
``s * u`` (zero at the first step) and ``n`` its number of coordinates (population dim excluded)::

    z  = <g, u'> * sqrt(n) / (|g| |u'| + eps)         (cosine of the fresh gradient and the last step, times sqrt(n))
    l <- clamp(l + exp(log_hyper_gain) * tanh(z), -hypergradient_range, hypergradient_range)

``<g, u'> > 0`` means the loss still falls along the last step, so a larger step would have helped
(``dL/d log(step) = -step <g, u'>``); an overshooting step turns it negative. ``z`` is ``cos * sqrt(n)``
because a noise-only gradient gives a cosine of about ``1/sqrt(n)``: ``tanh(z)`` is then about as noisy
for every tensor size. ``log_hyper_gain`` starts at ``log(beta)`` (a meta-parameter with
``learn_scale``). State: ``log_step`` and ``last_dir`` (per tensor, full shape, ``l`` repeated).

``hypergradient_momentum=mu`` in (0, 1) smooths that signal before it moves ``l`` (a momentum on the
log step size, bias-corrected as in Adam; ``t`` = the number of updates before this one)::

    a <- mu * a + (1 - mu) * tanh(z)
    l <- clamp(l + exp(log_hyper_gain) * a / (1 - mu^max(t, 1)), -hypergradient_range, hypergradient_range)

A signal that keeps its sign still moves ``l`` by the gain per step, while noise that flips sign
from step to step is averaged out (its effect on ``l`` shrinks about ``sqrt((1 - mu) / (1 + mu))``
times), so a larger gain can be used: the step size then finds its level in fewer steps. The
price is a lag of about ``1 / (1 - mu)`` steps before ``l`` turns. ``a`` is the state entry
``hyper_velocity`` (per tensor, full shape); ``mu = 0`` (the default) is the plain rule above.

``hypergradient_shrink=k > 0`` multiplies the signal by ``k`` where it is negative (after the momentum,
if any): with ``k > 1`` the step size falls ``k`` times faster than it rises, so a step that starts too
large (a larger learned scale) is undone quickly, as Rprop backs off faster than it grows. ``k = 1``
(the default) is the symmetric rule.

``hypergradient_floor=F`` in ``[-R, 0]`` lowers the clamp's lower end from ``-R`` to ``F``: ``l`` stays in ``[F, R]``.
The signal is a one-step (greedy) hypergradient, and where the gradient is dominated by minibatch noise
it is biased downwards: the last step moved along noise that the curvature now pushes back, and with
``k > 1`` a noise-only signal (``E[tanh z] = 0``) still has mean ``-(k - 1) / 2 * E|tanh z|``, about
``-0.3`` for ``k = 2``. ``l`` then drifts to the lower end whatever the task needs, and a step
``exp(-R)`` times the learned one can stall training. ``F`` bounds that drift (``None``, the default:
``F = -R``, the rule above).

``snr_step=True``: each MLP tensor's step (after the magnitude, before the hypergradient step size) is
multiplied by ``sqrt(mean_over_tensor(m_hat^2) / mean_over_tensor(v_hat))``, with ``m_hat``, ``v_hat``
Adam's bias-corrected ``momentum_0.9`` and ``rms_0.999``: the RMS of Adam's ``m / sqrt(v)``, about 1
while the gradient keeps its direction and about ``sqrt((1 - 0.9) / (1 + 0.9)) = 0.23`` when it is pure
noise. The normalised output otherwise takes the same step RMS in noisy and in steady phases, where
Adam's steps shrink with the signal-to-noise ratio; this puts that back, still free of the gradient's scale.

``radial_gain=beta > 0``: each MLP tensor's step is split into its part along the tensor itself
(radial, ``c * w_hat`` with ``w_hat = w / |w|`` and ``c = <u, w_hat>``: a change of the tensor's norm) and
the rest, and the radial part is multiplied by ``rho = exp(r)``, ``r`` in ``[-radial_range, 0]``,
adapted online by the sign of its own hypergradient (after the snr factor, before the step size)::

    z  = <g, w_hat> * sqrt(n) / (|g| + eps)          (cosine of the fresh gradient and w, times sqrt(n))
    r <- clamp(r + beta * k * tanh(z) * sign(c_last), -radial_range, 0)     (k = hypergradient_shrink
                                                                              where that product is < 0, else 1)
    u <- u + (rho - 1) * c * w_hat

``c_last`` is the radial coefficient of the last step (``new = w - step``: ``c < 0`` grows the tensor). A
rule meta-trained on short classification runs learns to grow every tensor (measured: ``cos(u, w)``
about -0.2 to -0.4 per tensor, where Adam's step has about 0): that lowers a cross-entropy loss quickly,
by sharpening the logits, and saturates units on a regression. Where the fresh gradient opposes the
last radial move, ``rho`` falls towards ``exp(-radial_range)``, where it agrees it stays at 1 (the
meta-trained rule). ``beta`` is a constant, not a meta-parameter. State: ``log_radial`` and
``last_radial`` (per tensor, full shape, ``r`` and ``c`` repeated; tensors with no dims are left alone).

``bias_rule="adam"``: tensors with at most one dim (biases, gains, scalars) skip the MLP and
take a plain Adam step (betas 0.9 / 0.999, eps 1e-8, with bias correction, from the
``momentum_0.9`` and ``rms_0.999`` buffers), times ``step_mult * lr * exp(log_bias_scale)``
(``sqrt(v + eps)`` in place of ``sqrt(v)``: the same numbers, and a finite derivative at ``v = 0``).

Initialisation: ``skip`` is one-hot on the Adam-like feature ``m_0.9 / sqrt(v_0.999)`` (the
decays nearest to 0.9 and 0.999; the momentum nearest to 0.9 without ``rms_decays``) and the
MLP's last layer is scaled by 0.01, so the untrained rule already takes a per-tensor normalised
Adam step; meta-training starts from a working optimizer. ``log_scale`` and ``log_bias_scale``
start at 0 (learned with ``learn_scale=True``, fixed buffers otherwise; ``log_bias_scale`` exists
only with ``bias_rule="adam"``).

State (the :mod:`baselines.base` convention)::

    {"step": int,
     "momentum_<d>": {name: Tensor(param.shape)}, ...,    # one per decay, e.g. "momentum_0.9"
     "rms_<b>": {name: Tensor(param.shape)}, ...,         # one per rms decay, e.g. "rms_0.999"
     "log_step": {name: Tensor(param.shape)},              # only with hypergradient > 0 (MLP tensors)
     "last_dir": {name: Tensor(param.shape)},              #   the same
     "hyper_velocity": {name: Tensor(param.shape)},        # only with hypergradient_momentum > 0 as well
     "log_radial": {name: Tensor(param.shape)},            # only with radial_gain > 0 (MLP tensors)
     "last_radial": {name: Tensor(param.shape)},           #   the same
     "horizon": int}                                      # only when init was given a horizon

Sign convention as in :mod:`.mlp`: ``new = w - step``, a positive direction moves against the
gradient-like features.

Batched populations: every per-tensor reduction skips ``population_dim`` when it is set (see
:func:`learned_opt.tasks.population.population_rule`). Batched meta-parameters: ``update`` has no
host syncs, no data-dependent control flow and no in-place ops, so it runs under
``torch.func.vmap`` over stacked meta-parameters given through ``torch.func.functional_call``
(with or without stacked inner params and state; the int step and horizon stay outside). The
evolution-strategies estimators instead call :meth:`NormalizedMLPOptimizer.update_members` (under
``no_grad``): the same update with the member dim first and per-member MLP weights in batched
matmuls, about 1.5x faster than ``vmap`` on CPU.
Devices and dtypes as in :mod:`.mlp`: meta-parameters are cast to the features' dtype.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.base import Params, State, check_keys, check_range
from baselines.checks import boolean, check_choice, check_int

from .batched import linear
from .features import momentum_key as _momentum_key
from .features import reduce_dims, second_moment_normalize
from .features import rms_key as _rms_key
from .rule import LearnedRule

__all__ = ["NormalizedMLPOptimizer", "BIAS_RULES", "orthogonalize"]

DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999)
RMS_DECAYS = (0.95, 0.999)
TIMESCALES = (1, 10, 100, 1000, 10000)
BIAS_RULES = ("mlp", "adam")
EPS = 1e-20                 # in every normalisation: RMS values down to ~1e-10 are normalised exactly;
                            # small enough for scale invariance, large enough that float32 backward
                            # passes through rsqrt stay finite at exactly zero inputs
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8   # the bias path's Adam
INIT_OUT_SCALE = 0.01       # the MLP's last layer starts this much smaller than torch's default
HYPER_KEYS = ("log_step", "last_dir")   # the hypergradient's state entries
RADIAL_KEYS = ("log_radial", "last_radial")   # radial_gain's state entries
VELOCITY_KEY = "hyper_velocity"         # and with hypergradient_momentum > 0, its smoothed signal
RELATIVE_FLOOR = 1e-6       # relative_step: the RMS used is sqrt(mean(w^2) + floor^2) (finite gradients at 0)
NUM_TIME_HORIZON = 2        # fraction-of-horizon features: [min(t / H, 1), 1] (zeros without H)


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)   # quintic Newton-Schulz iteration (Jordan et al. 2024, Muon)
NS_STEPS = 5


def orthogonalize(d: Tensor, batch_dims: int = 0, steps: int = NS_STEPS) -> Tensor:
    """Approximately ``U V^T`` for each matrix ``d = U S V^T``: the tensor (after ``batch_dims`` leading
    batch dims) seen as a ``(shape[0], prod(rest))`` matrix, normalised by its Frobenius norm and sent
    through ``steps`` quintic Newton-Schulz iterations ``X <- a X + (b A + c A^2) X``, ``A = X X^T``,
    which push the singular values towards 1 (into about [0.7, 1.2] for those above ~1/100 of the
    largest; smaller ones grow ~500x) and keep the singular vectors. Only matrix products: differentiable, and batched under ``vmap``."""
    shape = d.shape
    x = d.reshape(*shape[:batch_dims + 1], -1)
    wide = x.shape[-2] <= x.shape[-1]
    if not wide:
        x = x.transpose(-1, -2)
    x = x * torch.rsqrt((x * x).sum(dim=(-2, -1), keepdim=True) + EPS)
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        gram = x @ x.transpose(-1, -2)
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    if not wide:
        x = x.transpose(-1, -2)
    return x.reshape(shape)


def _decay_list(field: str, values: Sequence[float], key, allow_empty: bool) -> list[float]:
    values = [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in values]
    if not values and not allow_empty:
        raise ValueError(f"{field}=[] must name at least one decay in (0, 1)")
    for i, d in enumerate(values):
        check_range(f"{field}[{i}]", d, 0.0, 1.0, low_inclusive=False)
    if len({key(d) for d in values}) != len(values):
        raise ValueError(f"{field}={values!r} must be distinct")
    return values


class NormalizedMLPOptimizer(LearnedRule):
    """Per-parameter MLP learned optimizer with per-tensor normalised steps; see the module docstring.

    Args:
        hidden_sizes: widths of the ReLU hidden layers (``(8, 8)``).
        decays: momentum decays, each in (0, 1), distinct.
        rms_decays: decays of the EMAs of ``g^2`` behind the Adam-like features (may be empty).
        step_timescales: the ``s`` of the step embeddings ``tanh(t / s)``, each > 0.
        step_mult: the step's RMS per tensor before the learned scale (``1e-3``), > 0.
        lr: plain output multiplier (1.0); the one hyperparameter exposed to
            :class:`baselines.adapter.RuleOptimizer` (torch lr schedulers scale the steps with it).
        magnitude: learn a per-tensor step size ``2 * sigmoid(mean(MLP output 2))`` in (0, 2).
        magnitude_log_range: with ``magnitude``, widen that step size to
            ``exp(magnitude_log_range * tanh(mean(MLP output 2)))`` in ``(1/R, R)``, ``R = exp(range)``
            (``None``: the (0, 2) form). Both start at 1.
        output_norm: normalise each tensor's direction to unit RMS (True); False keeps the MLP's raw
            direction (an ablation: the step's size is then whatever the MLP outputs).
        learn_scale: ``log_scale`` (and ``log_bias_scale``) are meta-parameters; else fixed at 0.
        weight_decay: decoupled weight decay ``w <- w * (1 - step_mult * lr * weight_decay)``, >= 0.
        bias_rule: ``"mlp"`` (every tensor through the MLP) or ``"adam"`` (tensors with at most
            one dim take an Adam step; needs 0.9 in ``decays`` and 0.999 in ``rms_decays``).
        orthogonalize: replace the direction of every tensor with at least two dims by the nearest
            semi-orthogonal matrix (:func:`orthogonalize`) before normalising it (Celo2 / Muon).
        relative_step: multiply each MLP tensor's step by the tensor's own RMS (``sqrt(mean(w^2) +
            RELATIVE_FLOOR^2)``), so ``step_mult`` is a step relative to the weights' size (as in LARS and
            Adafactor) and rescaling a tensor rescales its steps alike; tensors that start at zero should
            take the Adam path (``bias_rule="adam"``).
        hypergradient: ``beta >= 0``, the initial gain of the online per-tensor step-size adaptation
            (module docstring); 0 turns it off (no extra state, no ``log_hyper_gain``).
        hypergradient_range: ``R > 0``: the adapted log step size stays in ``[-R, R]``.
        hypergradient_momentum: ``mu`` in ``[0, 1)``: smooth the hypergradient signal by a bias-corrected
            momentum before it moves the log step size (module docstring); 0 (the default): no smoothing.
        hypergradient_shrink: ``k > 0``: negative step-size signals are multiplied by ``k`` (module docstring);
            1 (the default): the log step size rises and falls alike.
        hypergradient_floor: ``F`` in ``[-R, 0]``: the adapted log step size stays in ``[F, R]`` (module
            docstring); ``None`` (the default): ``F = -R``.
        snr_step: multiply each MLP tensor's step by the RMS of Adam's ``m_hat / sqrt(v_hat)`` over the
            tensor (module docstring); needs 0.9 in ``decays`` and 0.999 in ``rms_decays``.
        radial_gain: ``beta >= 0``: adapt the part of each MLP tensor's step along the tensor itself
            online (module docstring); 0 (the default): off, no extra state.
        radial_range: ``R > 0``: that part's log multiplier stays in ``[-R, 0]``.

    Meta-parameters: ``layers`` (``nn.Linear``s, torch's default initialisation from torch's global
    RNG, last layer scaled by 0.01), ``skip`` (the linear direction term) and, with
    ``learn_scale``, ``log_scale`` (and ``log_bias_scale`` with ``bias_rule="adam"``, ``log_hyper_gain``
    with ``hypergradient > 0``).
    """

    population_dim: int | None = None  # set to skip a leading population dim in every reduction
    uses_horizon = True                # init(params, horizon=...) gives fraction-of-horizon features
    member_batched = False             # True while run with one meta-parameter set per member (batched.MemberRule)
    _members: dict[str, Tensor] | None = None   # the members' meta-parameters while in update_members

    def __init__(self, hidden_sizes: Sequence[int] = (8, 8), decays: Sequence[float] = DECAYS,
                 rms_decays: Sequence[float] = RMS_DECAYS, step_timescales: Sequence[float] = TIMESCALES,
                 step_mult: float = 1e-3, lr: float = 1.0, magnitude: bool = True, learn_scale: bool = True,
                 output_norm: bool = True, magnitude_log_range: float | None = None,
                 weight_decay: float = 0.0, bias_rule: str = "mlp", relative_step: bool = False,
                 orthogonalize: bool = False, hypergradient: float = 0.0, hypergradient_range: float = 3.0,
                 hypergradient_momentum: float = 0.0, hypergradient_shrink: float = 1.0,
                 hypergradient_floor: float | None = None, snr_step: bool = False,
                 radial_gain: float = 0.0, radial_range: float = 4.0):
        super().__init__()
        hidden_sizes = list(hidden_sizes)
        for i, h in enumerate(hidden_sizes):
            check_int(f"hidden_sizes[{i}]", h, 1)
        self.decays = _decay_list("decays", list(decays), _momentum_key, allow_empty=False)
        self.rms_decays = _decay_list("rms_decays", list(rms_decays), _rms_key, allow_empty=True)
        step_timescales = list(step_timescales)
        for i, s in enumerate(step_timescales):
            check_range(f"step_timescales[{i}]", s, 0.0, low_inclusive=False)
        check_range("step_mult", step_mult, 0.0, low_inclusive=False)
        check_range("lr", lr, 0.0)
        check_range("weight_decay", weight_decay, 0.0)
        check_range("hypergradient", hypergradient, 0.0)
        check_range("hypergradient_range", hypergradient_range, 0.0, low_inclusive=False)
        check_range("hypergradient_momentum", hypergradient_momentum, 0.0, 1.0, high_inclusive=False)
        if hypergradient_momentum > 0 and hypergradient == 0:
            raise ValueError(f"hypergradient_momentum={hypergradient_momentum} smooths the hypergradient step size: "
                             "it needs hypergradient > 0")
        self.hypergradient, self.hypergradient_range = float(hypergradient), float(hypergradient_range)
        self.hypergradient_momentum = float(hypergradient_momentum)
        check_range("hypergradient_shrink", hypergradient_shrink, 0.0, low_inclusive=False)
        self.hypergradient_shrink = float(hypergradient_shrink)
        if hypergradient_floor is not None:
            check_range("hypergradient_floor", hypergradient_floor, -self.hypergradient_range, 0.0, high_inclusive=True)
            if hypergradient == 0:
                raise ValueError(f"hypergradient_floor={hypergradient_floor} bounds the hypergradient step size: "
                                 "it needs hypergradient > 0")
            hypergradient_floor = float(hypergradient_floor)
        self.hypergradient_floor = hypergradient_floor
        check_range("radial_gain", radial_gain, 0.0)
        check_range("radial_range", radial_range, 0.0, low_inclusive=False)
        self.radial_gain, self.radial_range = float(radial_gain), float(radial_range)
        if magnitude_log_range is not None:
            check_range("magnitude_log_range", magnitude_log_range, 0.0, low_inclusive=False)
            magnitude_log_range = float(magnitude_log_range)
        self.magnitude_log_range = magnitude_log_range
        for field, flag in (("magnitude", magnitude), ("learn_scale", learn_scale), ("output_norm", output_norm),
                            ("relative_step", relative_step), ("orthogonalize", orthogonalize),
                            ("snr_step", snr_step)):
            boolean(field, flag)
        check_choice("bias_rule", bias_rule, BIAS_RULES)
        adam_buffer_users = [name for name, on in (("bias_rule='adam'", bias_rule == "adam"), ("snr_step", snr_step)) if on]
        if adam_buffer_users and (ADAM_BETAS[0] not in self.decays or ADAM_BETAS[1] not in self.rms_decays):
            verb = "uses" if len(adam_buffer_users) == 1 else "use"
            raise ValueError(f"{' and '.join(adam_buffer_users)} {verb} the momentum_0.9 and rms_0.999 buffers: "
                             f"decays={self.decays} must contain 0.9 and rms_decays={self.rms_decays} must contain 0.999")
        self.hidden_sizes = [int(h) for h in hidden_sizes]
        self.step_timescales = [float(s) for s in step_timescales]
        self.step_mult, self.lr, self.weight_decay = float(step_mult), float(lr), float(weight_decay)
        self.magnitude, self.learn_scale, self.bias_rule = magnitude, learn_scale, bias_rule
        self.output_norm, self.relative_step, self.orthogonalize = output_norm, relative_step, orthogonalize
        self.snr_step = snr_step

        k, r = len(self.decays), len(self.rms_decays)
        self.num_features = 2 + k + r * (1 + k)
        self.num_inputs = self.num_features + len(self.step_timescales) + NUM_TIME_HORIZON
        sizes = [self.num_inputs, *self.hidden_sizes, 2]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        skip = torch.zeros(self.num_inputs)
        skip[self.init_feature_index()] = 1.0
        self.skip = nn.Parameter(skip)
        with torch.no_grad():
            self.layers[-1].weight.mul_(INIT_OUT_SCALE)
            self.layers[-1].bias.zero_()
        scales = {"log_scale": 0.0}
        if bias_rule == "adam":
            scales["log_bias_scale"] = 0.0
        if self.hypergradient > 0:
            scales["log_hyper_gain"] = math.log(self.hypergradient)
        for name, value in scales.items():
            if learn_scale:
                setattr(self, name, nn.Parameter(torch.tensor(value)))
            else:
                self.register_buffer(name, torch.tensor(value))
        self.register_buffer("inv_timescales", torch.tensor([1.0 / s for s in self.step_timescales]),
                             persistent=False)

    # ------------------------------------------------------------------ bookkeeping
    def config(self) -> dict[str, Any]:
        return {"hidden_sizes": list(self.hidden_sizes), "decays": list(self.decays),
                "rms_decays": list(self.rms_decays), "step_timescales": list(self.step_timescales),
                "step_mult": self.step_mult, "lr": self.lr, "magnitude": self.magnitude, "output_norm": self.output_norm,
                "magnitude_log_range": self.magnitude_log_range,
                "learn_scale": self.learn_scale, "weight_decay": self.weight_decay, "bias_rule": self.bias_rule,
                "relative_step": self.relative_step, "orthogonalize": self.orthogonalize,
                "hypergradient": self.hypergradient, "hypergradient_range": self.hypergradient_range,
                "hypergradient_momentum": self.hypergradient_momentum, "hypergradient_shrink": self.hypergradient_shrink,
                "hypergradient_floor": self.hypergradient_floor, "snr_step": self.snr_step,
                "radial_gain": self.radial_gain, "radial_range": self.radial_range}

    @property
    def hyper_keys(self) -> tuple[str, ...]:
        """The hypergradient's state entries (none with ``hypergradient=0``)."""
        if self.hypergradient == 0:
            return ()
        return HYPER_KEYS + ((VELOCITY_KEY,) if self.hypergradient_momentum > 0 else ())

    @property
    def momentum_keys(self) -> list[str]:
        return [_momentum_key(d) for d in self.decays]

    @property
    def rms_keys(self) -> list[str]:
        return [_rms_key(b) for b in self.rms_decays]

    def feature_names(self) -> list[str]:
        """Names of the MLP's inputs, in order (features, then time)."""
        m = [f"m_{d:g}" for d in self.decays]
        adam = [f"{x}/sqrt(v_{b:g})" for b in self.rms_decays for x in ("g", *m)]
        return (["g", "w", *m, *adam] + [f"tanh(t/{s:g})" for s in self.step_timescales]
                + ["t/horizon", "has_horizon"])

    def init_feature_index(self) -> int:
        """Index of the feature the untrained direction follows: ``m_0.9 / sqrt(v_0.999)`` (nearest decays)."""
        d = min(range(len(self.decays)), key=lambda i: abs(self.decays[i] - 0.9))
        if not self.rms_decays:
            return 2 + d
        b = min(range(len(self.rms_decays)), key=lambda i: abs(self.rms_decays[i] - 0.999))
        return 2 + len(self.decays) + b * (1 + len(self.decays)) + 1 + d

    # ------------------------------------------------------------------ features
    def _dims(self, x: Tensor, trailing: int = 0) -> tuple[int, ...]:
        """The dims of one tensor's reduction (all but the population dim), ``trailing`` feature dims excluded."""
        return reduce_dims(x.dim() - trailing, self.population_dim)

    def _is_small(self, p: Tensor) -> bool:
        """Whether ``p`` goes the bias path: at most one dim besides the population dim."""
        return self.bias_rule == "adam" and p.dim() - (self.population_dim is not None) <= 1

    def features(self, grad: Tensor, param: Tensor, momenta: Sequence[Tensor], rms: Sequence[Tensor]) -> Tensor:
        """Normalised per-coordinate features of one tensor: shape ``(*param.shape, num_features)``."""
        raw = [grad, param.to(grad.dtype), *momenta]
        for v in rms:
            inv = torch.rsqrt(v + EPS)
            raw += [grad * inv, *(m * inv for m in momenta)]
        x = torch.stack(raw, dim=-1)
        return second_moment_normalize(x, self._dims(x, 1), EPS)

    def time_features(self, step: int, horizon: int | None, like: Tensor) -> Tensor:
        """``[tanh(step / s)..., min(step / horizon, 1), 1]`` (last two 0 without a horizon), ``like``'s dtype."""
        inv = self.inv_timescales.to(device=like.device, dtype=torch.float64)
        frac = [min(step / horizon, 1.0), 1.0] if horizon else [0.0, 0.0]
        return torch.cat([torch.tanh(inv * step), inv.new_tensor(frac)]).to(like.dtype)

    def _meta(self, name: str) -> Tensor:
        """A meta-parameter (or buffer) by name: the rule's own, or in :meth:`update_members` the members'
        stacked ``(P, ...)`` values when they are among the perturbed ones."""
        members = self._members
        if members is not None and name in members:
            return members[name]
        module, _, attr = name.rpartition(".")
        return getattr(self.get_submodule(module) if module else self, attr)

    def _per_member(self, value: Tensor, like: Tensor) -> Tensor:
        """A learned scale shaped to multiply ``like``: in :meth:`update_members` one value per member
        (``(P,)`` viewed as ``(P, 1, ...)``), otherwise the scalar itself."""
        return value.view(-1, *[1] * (like.dim() - 1)) if self._members is not None else value

    def mlp_members(self, feats: Tensor, time: Tensor) -> Tensor:
        """:meth:`mlp` with each member's own weights (in :meth:`update_members`): ``feats`` ``(P, N, features)``,
        ``time`` the ``(T,)`` time features (the same for every coordinate, so folded into the first
        layer's bias and the skip's constant), returns ``(P, N, 2)``."""
        nf = self.num_features
        h = feats
        for i in range(len(self.layers)):
            w = self._meta(f"layers.{i}.weight").to(feats.dtype)
            b = self._meta(f"layers.{i}.bias").to(feats.dtype)
            if i == 0:
                w, b = w[:, :, :nf], b + w[:, :, nf:] @ time
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if i < len(self.layers) - 1:
                h = h.relu_()
        skip = self._meta("skip").to(feats.dtype)
        direction = h[..., 0] + (feats @ skip[:, :nf].unsqueeze(-1)).squeeze(-1) + (skip[:, nf:] @ time).unsqueeze(-1)
        return torch.stack([direction, h[..., 1]], dim=-1)

    def mlp(self, x: Tensor) -> Tensor:
        """The MLP on a batch of inputs ``(N, num_inputs)``: ``(N, 2)`` = (direction, magnitude) with the skip."""
        h = x
        for i, layer in enumerate(self.layers):
            h = linear(h, layer.weight.to(x.dtype), layer.bias.to(x.dtype), self.member_batched)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        direction = h[:, 0] + x @ self.skip.to(x.dtype)
        return torch.stack([direction, h[:, 1]], dim=-1)

    # ------------------------------------------------------------------ the rule
    def init(self, params: Params, horizon: int | None = None) -> State:
        """Zero momenta and second moments; ``horizon`` (the planned number of updates) enables the
        fraction-of-horizon features and is kept in the state."""
        state: State = {"step": 0}
        for key in (*self.momentum_keys, *self.rms_keys):
            state[key] = {k: torch.zeros_like(p) for k, p in params.items()}
        if self.hypergradient > 0:
            for key in self.hyper_keys:
                state[key] = {k: torch.zeros_like(p) for k, p in params.items() if not self._is_small(p)}
        if self.radial_gain > 0:
            for key in RADIAL_KEYS:
                state[key] = {k: torch.zeros_like(p) for k, p in params.items() if not self._is_small(p)}
        if horizon is not None:
            check_int("horizon", horizon, 1)
            state["horizon"] = horizon
        return state

    def update_members(self, meta: dict[str, Tensor], grads: Params, state: State, params: Params,
                       workspace: dict | None = None) -> tuple[Params, State]:
        """:meth:`update` of ``P`` population members at once under ``no_grad``, member ``i`` with the
        meta-parameters ``meta[name][i]`` (every tensor has a leading member dim ``P``): what
        :class:`~.batched.MemberRule` calls instead of ``vmap`` (the evolution-strategies estimators).
        The same code as :meth:`update` with the population dim first, each member's coordinates
        through its own MLP as one batched matmul, and the learned scales per member. Equal to
        :meth:`update` on each member up to float rounding (tested)."""
        if self.population_dim is not None:
            raise ValueError("update_members gives each member its own tensors: leave population_dim unset")
        saved = {k: vars(self)[k] for k in ("population_dim", "_members") if k in vars(self)}
        self.population_dim, self._members = 0, meta
        try:
            return self.update(grads, state, params)
        finally:
            for k in ("population_dim", "_members"):
                if k in saved:
                    setattr(self, k, saved[k])
                else:
                    delattr(self, k)

    def _snr(self, k: str, new_state: State, t: int, dims: tuple[int, ...]) -> Tensor:
        """``snr_step``'s factor for tensor ``k`` after ``t`` updates: the RMS of Adam's bias-corrected
        ``m_0.9 / sqrt(v_0.999)`` over the tensor, computed as ``sqrt(mean(m_hat^2) / mean(v_hat))``."""
        b1, b2 = ADAM_BETAS
        m, v = new_state[_momentum_key(b1)][k], new_state[_rms_key(b2)][k]
        mean = (lambda x: x.mean(dim=dims, keepdim=True)) if dims else (lambda x: x)
        ratio = mean(m * m) / (1 - b1 ** t) ** 2 / (mean(v) / (1 - b2 ** t) + EPS)
        return torch.sqrt(ratio)

    @staticmethod
    def _scaled_cos(g: Tensor, d: Tensor, dims: tuple[int, ...]) -> Tensor:
        """``cos(g, d) * sqrt(n)`` over the tensor dims ``dims`` (``n`` coordinates, keepdim): the signal of both
        online controllers, about as noisy for every tensor size (module docstring)."""
        total = (lambda x: x.sum(dim=dims, keepdim=True)) if dims else (lambda x: x)  # noqa: E731
        n = math.prod(g.shape[i] for i in dims)
        return total(g * d) * math.sqrt(n) * torch.rsqrt(total(g * g) * total(d * d) + EPS)

    def _shrink(self, signal: Tensor) -> Tensor:
        """``hypergradient_shrink``: negative controller signals times ``k`` (unchanged for ``k = 1``)."""
        if self.hypergradient_shrink == 1:
            return signal
        return torch.where(signal < 0, self.hypergradient_shrink * signal, signal)

    def _radial(self, k: str, u: Tensor, g: Tensor, w: Tensor, dims: tuple[int, ...], state: State,
                new_state: State) -> Tensor:
        """``radial_gain``: tensor ``k``'s step with its part along ``w`` scaled by the adapted ``exp(r)``;
        updates ``new_state``'s ``log_radial`` and ``last_radial`` (module docstring)."""
        log_radial, last = state["log_radial"][k].to(u.dtype), state["last_radial"][k].to(u.dtype)
        if not dims:   # a tensor without dims has no direction to split off
            new_state["log_radial"][k], new_state["last_radial"][k] = log_radial, last
            return u
        w_hat = w * torch.rsqrt((w * w).sum(dim=dims, keepdim=True) + EPS)
        signal = self._shrink(torch.tanh(self._scaled_cos(g, w, dims)) * torch.sign(last))
        log_radial = torch.clamp(log_radial + self.radial_gain * signal, -self.radial_range, 0.0)
        c = (u * w_hat).sum(dim=dims, keepdim=True)
        new_state["log_radial"][k], new_state["last_radial"][k] = log_radial, c.expand_as(u)
        return u + (torch.exp(log_radial) - 1) * c * w_hat

    def _adapt(self, k: str, u: Tensor, g: Tensor, dims: tuple[int, ...], state: State, new_state: State) -> Tensor:
        """The hypergradient step size of tensor ``k``: updates ``new_state``'s ``log_step`` and ``last_dir``
        and returns ``u * exp(l)`` (module docstring)."""
        last, log_step = state["last_dir"][k].to(u.dtype), state["log_step"][k].to(u.dtype)
        z = self._scaled_cos(g, last, dims)
        gain = torch.exp(self._meta("log_hyper_gain").to(u.dtype))
        r, mu, signal = self.hypergradient_range, self.hypergradient_momentum, torch.tanh(z)
        if mu > 0:   # bias-corrected momentum on the signal; t = 0 has no signal (no last step) and a = 0
            velocity = mu * state[VELOCITY_KEY][k].to(u.dtype) + (1 - mu) * signal
            new_state[VELOCITY_KEY][k] = velocity
            signal = velocity / (1 - mu ** max(state["step"], 1))
        signal = self._shrink(signal)
        low = -r if self.hypergradient_floor is None else self.hypergradient_floor
        log_step = torch.clamp(log_step + self._per_member(gain, z) * signal, low, r)
        new_state["log_step"][k], new_state["last_dir"][k] = log_step, u
        return u * torch.exp(log_step)

    def update(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        check_keys(grads, params)
        names, step, horizon = list(params), state["step"], state.get("horizon")
        new_state: State = {"step": step + 1}
        for key, d in zip(self.momentum_keys, self.decays):
            new_state[key] = {k: d * m + (1 - d) * grads[k] for k, m in state[key].items()}
        for key, b in zip(self.rms_keys, self.rms_decays):
            new_state[key] = {k: b * v + (1 - b) * grads[k] * grads[k] for k, v in state[key].items()}
        if self.hypergradient > 0:
            new_state.update({key: {} for key in self.hyper_keys})   # filled per MLP tensor by _adapt
        if self.radial_gain > 0:
            new_state.update({key: {} for key in RADIAL_KEYS})       # filled per MLP tensor by _radial
        if horizon is not None:
            new_state["horizon"] = horizon
        if not names:
            return {}, new_state

        alpha = self.step_mult * self.lr
        steps: dict[str, Tensor] = {}
        mlp_names = [k for k in names if not self._is_small(params[k])]
        if mlp_names:
            feats = [self.features(grads[k], params[k], [new_state[key][k] for key in self.momentum_keys],
                                   [new_state[key][k] for key in self.rms_keys]) for k in mlp_names]
            members = self._members is not None   # (P, coordinates, features): one MLP per member
            lead = (feats[0].shape[0],) if members else ()
            flat = torch.cat([f.reshape(*lead, -1, self.num_features) for f in feats], dim=len(lead))
            time = self.time_features(step, horizon, flat)
            out = self.mlp_members(flat, time) if members else \
                self.mlp(torch.cat([flat, time.expand(flat.shape[0], -1)], dim=-1))
            scale = torch.exp(self._meta("log_scale").to(out.dtype)) * alpha
            sizes = [params[k][0].numel() if members else params[k].numel() for k in mlp_names]
            for k, o in zip(mlp_names, out.split(sizes, dim=len(lead))):
                o = o.reshape(*params[k].shape, 2)
                direction, mag = o[..., 0], o[..., 1]
                dims = self._dims(direction)
                if self.orthogonalize and len(dims) >= 2:
                    if self.population_dim not in (None, 0):
                        raise ValueError(f"orthogonalize needs the population dim first, not {self.population_dim}")
                    direction = orthogonalize(direction, batch_dims=direction.dim() - len(dims))
                u = second_moment_normalize(direction, dims, EPS) if self.output_norm else direction
                if self.magnitude:
                    mean_mag = mag.mean(dim=dims, keepdim=True) if dims else mag
                    u = u * (2 * torch.sigmoid(mean_mag) if self.magnitude_log_range is None
                             else torch.exp(self.magnitude_log_range * torch.tanh(mean_mag)))
                if self.snr_step:
                    u = u * self._snr(k, new_state, step + 1, dims).to(u.dtype)
                if self.radial_gain > 0:
                    u = self._radial(k, u, grads[k].to(u.dtype), params[k].to(u.dtype), dims, state, new_state)
                if self.hypergradient > 0:
                    u = self._adapt(k, u, grads[k].to(u.dtype), dims, state, new_state)
                if self.relative_step:  # times the tensor's own RMS: the step follows a rescaling of w
                    w = params[k].to(u.dtype)
                    u = u * torch.sqrt(((w * w).mean(dim=dims, keepdim=True) if dims else w * w) + RELATIVE_FLOOR ** 2)
                steps[k] = self._per_member(scale, u) * u
        small = [k for k in names if k not in steps]
        if small:
            t = step + 1
            b1, b2 = ADAM_BETAS
            m_key, v_key = _momentum_key(b1), _rms_key(b2)
            bias_scale = torch.exp(self._meta("log_bias_scale")) * (alpha / (1 - b1 ** t))
            for k in small:
                m, v = new_state[m_key][k], new_state[v_key][k]
                steps[k] = self._per_member(bias_scale, m).to(m.dtype) * m / (torch.sqrt(v + EPS) / math.sqrt(1 - b2 ** t) + ADAM_EPS)
        decay = 1 - alpha * self.weight_decay
        new_params = {k: (params[k] * decay if self.weight_decay else params[k]) - steps[k].to(params[k].dtype)
                      for k in names}
        return new_params, new_state
