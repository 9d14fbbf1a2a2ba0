"""DGCSGD: momentum SGD for a model whose compressed parameters gradcomp gives their velocity.

With DGC's momentum correction gradcomp's hook hands back, for each parameter it compresses,
the velocity u = m*u + g of the gradient (summed over the ranks), not the gradient. Momentum
SGD with weight decay wd steps by u' = m*u' + g + wd*p. Both are linear, so u' = u + w with
w = m*w + wd*p: the decay's own momentum buffer, kept locally (p is the same on every rank, so
it needs no communication and is not compressed). torch.optim.SGD cannot keep it apart: on the
momentum-0 group its decay acts without momentum, and GradcompState.param_groups can only scale
it to wd / (1 - m), right in the steady state. DGCSGD keeps w and so follows momentum SGD with
decay exactly, from the first step (as DGC's reference optimizer does).

    groups = state.param_groups(model.parameters(), weight_decay=5e-4)
    opt = gradcomp.torch.DGCSGD(groups, lr=0.1)

The groups param_groups marks (key "gradcomp_velocity": the momentum gradcomp applies) step
by p -= lr * (g + w); every other group steps as torch.optim.SGD would (momentum, dampening,
nesterov, weight_decay, maximize), with the same "momentum_buffer" state.

A marked group's decay wd is its "gradcomp_weight_decay". Where that is absent or 0, its
"weight_decay" (the group's own, or DGCSGD(..., weight_decay=wd)'s default, as
torch.optim.SGD takes it) is the decay, applied the same way through w: so
DGCSGD(state.param_groups(params), lr, weight_decay=wd) is momentum SGD with decay wd on every
parameter too. A marked group whose "weight_decay" is neither 0, its gradcomp_weight_decay,
nor the wd / (1 - m) param_groups writes for torch.optim.SGD is refused (ValueError): the two
disagree.
"""
import math

import torch

__all__ = ["DGCSGD"]

VELOCITY = "gradcomp_velocity"  # the group's parameters get gradcomp's velocity u = m*u + g
WEIGHT_DECAY = "gradcomp_weight_decay"  # their decay, applied through w = m*w + wd*p


class DGCSGD(torch.optim.Optimizer):
    """Momentum SGD that keeps the weight decay's momentum of the groups whose velocity
    gradcomp applies (GradcompState.param_groups with method="dgc" and momentum
    correction), and is torch.optim.SGD for every other group. Arguments as torch.optim.SGD's
    (single-tensor updates); weight_decay applies to the marked groups as well, through the
    decay's momentum buffer (see the module docstring). A marked group refuses dampening,
    nesterov and maximize: gradcomp's velocity has none of them, and it is checked at every
    step, so that a scheduler cycling momentum (OneCycleLR, CyclicLR) is refused there rather
    than ignored. foreach is taken (torch.optim.SGD's choice of speed; the updates here are
    single-tensor whatever it says); fused=True and differentiable=True are refused."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None):
        for name, v in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not float(v) >= 0.0:
                raise ValueError(f"DGCSGD: {name}={v} must be >= 0")
        for name, v in (("fused", fused), ("differentiable", differentiable)):
            # Taken as torch.optim.SGD takes them, so that its arguments carry over; DGCSGD has
            # neither a fused kernel nor a graph through its updates.
            if v:
                raise ValueError(f"DGCSGD: {name}={v} is not supported (its updates are "
                                 f"torch.optim.SGD's single-tensor ones): pass {name}="
                                 f"{None if name == 'fused' else False} or leave it out")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"DGCSGD: nesterov needs momentum > 0 (got {momentum}) and "
                             f"dampening 0 (got {dampening})")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def add_param_group(self, param_group):
        # Checked with the defaults filled in, before the group joins (a refused group is
        # not left behind).
        if isinstance(param_group, dict):
            self._check_group(dict(self.defaults, **param_group))
        super().add_param_group(param_group)

    @staticmethod
    def _check_group(g):
        if VELOCITY not in g:
            return
        m = float(g[VELOCITY])
        if not 0.0 <= m < 1.0:
            raise ValueError(f"DGCSGD: a group's {VELOCITY}={m} must be in [0, 1)")
        bad = [f"{k}={g[k]}" for k, off in (("dampening", 0), ("nesterov", False),
                                             ("maximize", False), ("momentum", 0.0))
               if g.get(k, off) != off]
        if bad:
            hint = ("; a scheduler that cycles momentum (OneCycleLR, CyclicLR: "
                    "cycle_momentum=True, their default) sets it on every group: pass "
                    "cycle_momentum=False (gradcomp's momentum is its own setting)"
                    if g.get("momentum", 0.0) != 0.0 else "")
            raise ValueError("DGCSGD: the group of parameters whose velocity gradcomp applies "
                             f"must have momentum 0, dampening 0, nesterov and maximize off; it "
                             f"has {', '.join(bad)} (gradcomp's u = m*u + g has none of them)"
                             + hint)
        DGCSGD._marked_decay(g)

    @staticmethod
    def _marked_decay(g):
        """The decay wd of a marked group (applied through w = m*w + wd*p): its
        gradcomp_weight_decay, else its weight_decay; refused where the two disagree."""
        m = float(g[VELOCITY])
        own = float(g.get("weight_decay", 0.0) or 0.0)
        exact = float(g.get(WEIGHT_DECAY, 0.0) or 0.0)
        if not own >= 0.0 or not exact >= 0.0:
            raise ValueError(f"DGCSGD: a group's weight_decay={own} and {WEIGHT_DECAY}={exact} "
                             "must be >= 0")
        if exact == 0.0:
            return own
        if own == 0.0 or any(math.isclose(own, v, rel_tol=1e-9)
                             for v in (exact, exact / (1.0 - m))):
            return exact
        raise ValueError(
            f"DGCSGD: a group marked {VELOCITY}={m} has weight_decay={own} and "
            f"{WEIGHT_DECAY}={exact}, which disagree (param_groups writes weight_decay = "
            f"{WEIGHT_DECAY} / (1 - m) = {exact / (1.0 - m)} for torch.optim.SGD): give the decay "
            "once, as state.param_groups(params, weight_decay=wd)")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            if VELOCITY in g:
                self._velocity_step(g)
            else:
                self._sgd_step(g)
        return loss

    def _velocity_step(self, g):
        # Checked again here: a scheduler (cycle_momentum) or a loaded state dict changes the
        # group without add_param_group, and its momentum would be ignored silently.
        self._check_group(g)
        m, wd, lr = float(g[VELOCITY]), self._marked_decay(g), g["lr"]
        for p in g["params"]:
            if p.grad is None:
                continue
            d = p.grad
            if wd != 0.0:
                st = self.state[p]
                w = st.get("weight_decay_buffer")
                if w is None:
                    w = st["weight_decay_buffer"] = torch.mul(p, wd)
                else:
                    w.mul_(m).add_(p, alpha=wd)
                d = d.add(w)
            p.add_(d, alpha=-lr)

    def _sgd_step(self, g):
        # torch.optim.SGD's single-tensor update, op for op.
        wd, m, damp, lr = g["weight_decay"], g["momentum"], g["dampening"], g["lr"]
        for p in g["params"]:
            if p.grad is None:
                continue
            d = p.grad if not g["maximize"] else -p.grad
            if wd != 0:
                d = d.add(p, alpha=wd)
            if m != 0:
                st = self.state[p]
                buf = st.get("momentum_buffer")
                if buf is None:
                    buf = st["momentum_buffer"] = torch.clone(d).detach()
                else:
                    buf.mul_(m).add_(d, alpha=1 - damp)
                d = d.add(buf, alpha=m) if g["nesterov"] else buf
            p.add_(d, alpha=-lr)
