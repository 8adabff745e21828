"""How much each parameter's gradient cancels: the size of its per-element terms against the size of their sum.

A parameter's gradient is a sum over every element its uses produce (a bias over all tokens, ``A_log`` over
tokens and channels, a weight over tokens): ``sum_e g_e a_e``, ``g`` the gradient reaching the op's output,
``a`` the op's derivative in the parameter. A GPU computes ``g`` with some error (TF32 dots, bf16 rounding),
and the sum's error is then up to that error times the terms' magnitudes summed, so its relative error is the
error's relative size times the **cancellation** ``||sum of term magnitudes|| / ||sum of terms||`` (>= 1;
large when terms of both signs nearly cancel, as in ``A_log``'s or the fusion gate's bias's). Two error models
give the magnitudes: each ``g_e`` off by a fraction of itself (``|g_e a_e|``), or off by a fraction of the
gradient's typical size, its RMS over the op's output (``rms(g) |a_e|``: what dot products do, whose error
scales with their summands, not their result). ``cancellation`` takes the larger. ``gpu_parity.py`` scales
each gradient's tolerance by it, so a near-cancelling sum does not fail from round-off alone.

``gradient_cancellations`` measures it on the float64 reference run: a ``TorchFunctionMode``
(``UseRecorder``) sees every op a parameter (or a tensor derived from it by a view, a cast or an element-wise
function of it alone, such as ``-exp(A_log)``) enters, and a hook keeps each such op's output gradient. After
the backward, each use's terms are recovered: for element-wise ops by the op's vector-Jacobian product with
the parameter broadcast to the output's shape (one term per output element); for the multilinear ops
(linear, matmul, einsum, convolution, embedding, RMSNorm's weight) by the product with every operand replaced
by its magnitude (``sum |a| |g|``: the terms' magnitudes summed without forming them). The signed sums of the
same terms reproduce the parameters' gradients exactly (``tests/test_gpu_parity.py`` checks this), which
shows no use was missed. An op on a parameter that fits neither kind raises, rather than guess.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

# Ops linear in each parameter operand (and additive in a bias): their terms' magnitudes sum to the op's
# vector-Jacobian product with every operand's magnitude.
MULTILINEAR = {F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.bmm,
               torch.einsum, F.conv1d, torch.conv1d, F.embedding, torch.embedding, F.rms_norm, torch.rms_norm}
# Element-wise ops: one term per output element.
ELEMENTWISE = {"add", "sub", "mul", "div", "addcmul", "addcdiv", "lerp", "where", "maximum", "minimum",
               "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__"}
# Ops that turn a parameter into a tensor of the same entries, or an element-wise function of it alone.
# (Arithmetic counts here when its other operand is a number: ``1 - w``.)
DERIVING = {"__getitem__", "to", "float", "double", "view", "reshape", "squeeze", "unsqueeze", "contiguous",
            "transpose", "t", "permute", "flatten", "exp", "log", "sqrt", "square", "neg", "__neg__", "sigmoid",
            "tanh", "softplus", "add", "sub", "mul", "div", "__add__", "__radd__", "__sub__", "__rsub__",
            "__mul__", "__rmul__", "__truediv__"}


def _name(func) -> str:
    return getattr(func, "__name__", str(func))


def _tensors(args, kwargs):
    """``(location, tensor)`` for each tensor argument; location is an index or a keyword."""
    found = [(i, a) for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    found += [(k, a) for k, a in kwargs.items() if isinstance(a, torch.Tensor)]
    return found


def _nested_tensors(args, kwargs):
    return [t for a in (*args, *kwargs.values()) if isinstance(a, (list, tuple)) for t in a
            if isinstance(t, torch.Tensor)]


def _replace(args, kwargs, location, value):
    args, kwargs = list(args), dict(kwargs)
    if isinstance(location, int):
        args[location] = value
    else:
        kwargs[location] = value
    return args, kwargs


class UseRecorder(TorchFunctionMode):
    """Records each op a tracked parameter enters (see the module docstring); ``terms()`` after the backward."""

    def __init__(self, named_parameters):
        super().__init__()
        self.root = {id(p): (name, p) for name, p in named_parameters}  # tensor id -> its parameter
        self.keep = []   # every tracked tensor stays alive, so no id is reused while recording
        self.uses = []   # (parameter name, the tensor used, func, args, kwargs, location, kind, output)
        self.grads = {}  # id(output) -> its gradient

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            return out
        tracked = [(loc, t) for loc, t in _tensors(args, kwargs) if id(t) in self.root]
        if any(id(t) in self.root for t in _nested_tensors(args, kwargs)):
            raise NotImplementedError(f"grad_sums: a parameter inside a list argument of {_name(func)}")
        if not tracked:
            return out
        others = [t for _, t in _tensors(args, kwargs) if id(t) not in self.root]
        (loc, first), name = tracked[0], _name(func)
        if len(tracked) == 1 and not others and out.numel() == first.numel() and func not in MULTILINEAR:
            if name not in DERIVING:
                raise NotImplementedError(f"grad_sums: {name} on {self.root[id(first)][0]} is not a known view, "
                                          "cast or element-wise function")
            self.root[id(out)] = self.root[id(first)]
            self.keep.append(out)
            return out
        kind = "multilinear" if func in MULTILINEAR else "elementwise" if name in ELEMENTWISE else None
        if kind is None:
            raise NotImplementedError(f"grad_sums: {name} takes parameter {self.root[id(first)][0]}; add it to "
                                      "MULTILINEAR or ELEMENTWISE if it is one")
        for loc, t in tracked:
            self.uses.append((self.root[id(t)][0], t, func, args, kwargs, loc, kind, out))
        self.keep.append(out)
        out.register_hook(lambda grad, key=id(out): self.grads.__setitem__(key, grad))
        return out

    def terms(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per parameter name: the sum of its gradient's terms and of their magnitudes under the two error
        models (relative, absolute; see the module docstring), each of the parameter's shape."""
        per_tensor = {}  # id(tracked tensor) -> [tensor, signed, relative, absolute]
        for _, t, func, args, kwargs, loc, kind, out in self.uses:
            grad = self.grads.get(id(out))
            if grad is None:
                continue  # the output did not reach the loss
            entry = per_tensor.setdefault(id(t), [t, 0, 0, 0])
            for i, part in enumerate(_use_terms(func, args, kwargs, loc, t, kind, out, grad), start=1):
                entry[i] = entry[i] + part
        result = {}
        for t, *sums in per_tensor.values():
            name, param = self.root[id(t)]
            if t is not param:  # back through the view / cast / element-wise chain to the parameter
                sums = [torch.autograd.grad(t, param, part, retain_graph=True)[0] for part in sums]
                sums = sums[:1] + [part.abs() for part in sums[1:]]
            total = result.setdefault(name, [0, 0, 0])
            for i, part in enumerate(sums):
                total[i] = total[i] + part
        return {name: tuple(sums) for name, sums in result.items()}


def _use_terms(func, args, kwargs, loc, t, kind, out, grad):
    """(signed sum, relative-model magnitudes, absolute-model magnitudes) of one use's terms, in ``t``'s shape."""
    typical = torch.full_like(grad, float(grad.square().mean().sqrt()))
    with torch.enable_grad():
        if kind == "elementwise":
            leaf = torch.broadcast_to(t.detach(), out.shape).clone().requires_grad_(True)
            args_, kwargs_ = _replace(*_detached(args, kwargs), loc, leaf)
            out_ = func(*args_, **kwargs_)
            per_element = torch.autograd.grad(out_, leaf, grad, retain_graph=True)[0]
            derivative = torch.autograd.grad(out_, leaf, torch.ones_like(grad))[0]
            return (per_element.sum_to_size(t.shape), per_element.abs().sum_to_size(t.shape),
                    (derivative.abs() * typical).sum_to_size(t.shape))
        leaf = t.detach().clone().requires_grad_(True)
        args_, kwargs_ = _replace(*_detached(args, kwargs), loc, leaf)
        signed = torch.autograd.grad(func(*args_, **kwargs_), leaf, grad)[0]
        args_, kwargs_ = _replace(*_detached(args, kwargs, magnitude=True), loc, leaf)
        out_ = func(*args_, **kwargs_)
        relative = torch.autograd.grad(out_, leaf, grad.abs(), retain_graph=True)[0]
        return signed, relative, torch.autograd.grad(out_, leaf, typical)[0]


def _detached(args, kwargs, magnitude: bool = False):
    def fix(a):
        if not isinstance(a, torch.Tensor):
            return a
        a = a.detach()
        return a.abs() if magnitude and a.is_floating_point() else a
    return [fix(a) for a in args], {k: fix(a) for k, a in kwargs.items()}


def cancellation(signed: torch.Tensor, *magnitudes: torch.Tensor) -> float:
    """``||sum of term magnitudes|| / ||sum of terms||`` under the larger error model, at least 1 (1: no term
    cancels another)."""
    return max(1.0, max(float(m.norm()) for m in magnitudes) / float(signed.norm().clamp_min(1e-300)))


def gradient_cancellations(model: torch.nn.Module, forward):
    """Run ``forward()`` (returning ``(result, scalar loss)``) recording the uses of ``model``'s parameters, and
    the loss's backward (which leaves ``.grad`` as a plain backward would: the recorder only observes).
    Returns ``(result, {name: cancellation}, {name: (signed, relative, absolute) term sums})``."""
    recorder = UseRecorder(model.named_parameters())
    with recorder:
        result, loss = forward()
    loss.backward(retain_graph=True)
    sums = recorder.terms()
    return result, {name: cancellation(*sums[name]) for name in sums}, sums
