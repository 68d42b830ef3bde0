"""NumPy oracle for log-polar space convolution, written from the paper/spec formula.

Independent of keras_convx: its own region-map transcription (scalar loops, math.atan2),
its own padding and pooling. Float64 throughout.
"""

import math

import numpy as np


def regions(kernel_size, rings, sectors, growth_rate, initial_angle=0.0):
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    cy, cx = (kh - 1) // 2, (kw - 1) // 2
    ratio = kh / kw
    radius = (max(kh, kw) - 1) // 2
    d1 = max(radius**2 / (growth_rate**2) ** (rings - 1), 2.0)
    thresholds = [float(np.float32(d1 * (growth_rate**2) ** l)) for l in range(rings)]
    bounds = [float(np.float32(2 * math.pi * (a + 1) / sectors - 1e-6)) for a in range(sectors)]
    ring = np.zeros((kh, kw), int)
    sector = np.zeros((kh, kw), int)
    for i in range(kh):
        for j in range(kw):
            dy, dx = i - cy, j - cx
            theta = 0.0 if (dy == 0 and dx == 0) else math.atan2(-dy, dx)
            theta += initial_angle
            if theta > 2 * math.pi:
                theta -= 2 * math.pi
            if theta < 0:
                theta += 2 * math.pi
            a = 0
            while a < sectors and theta > bounds[a]:
                a += 1
            sector[i, j] = min(a, sectors - 1)
            c, s = math.cos(initial_angle), math.sin(initial_angle)
            rho = (dx * c - dy * s) ** 2 + ((-dx * s - dy * c) ** 2) / ratio**2
            rho = float(np.float32(rho))
            l = 0
            while l < rings and rho > thresholds[l]:
                l += 1
            ring[i, j] = min(l, rings - 1)
    return ring, sector


def pooled_regions(x, kernel_size, rings, sectors, growth_rate, initial_angle=0.0, strides=1,
                   padding="same", pooling="mean"):
    """(B, Ho, Wo, C, rings, sectors) region pools of channels_last x (zero padding counts)."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    sh, sw = (strides, strides) if isinstance(strides, int) else strides
    ring, sector = regions((kh, kw), rings, sectors, growth_rate, initial_angle)
    b, h, w, c = x.shape
    cy, cx = (kh - 1) // 2, (kw - 1) // 2
    if padding == "same":
        xp = np.zeros((b, h + kh - 1, w + kw - 1, c))
        xp[:, cy:cy + h, cx:cx + w] = x
        ho, wo = (h - 1) // sh + 1, (w - 1) // sw + 1
    else:
        xp = x
        ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = np.zeros((b, ho, wo, c, rings, sectors))
    for l in range(rings):
        for a in range(sectors):
            members = [(i, j) for i in range(kh) for j in range(kw) if ring[i, j] == l and sector[i, j] == a]
            if not members:
                continue
            vals = np.stack(
                [xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :] for i, j in members], -1
            )
            if pooling == "mean":
                out[..., l, a] = vals.mean(-1)
            elif pooling == "sum":
                out[..., l, a] = vals.sum(-1)
            else:
                out[..., l, a] = vals.max(-1)
    centre = xp[:, cy:cy + sh * (ho - 1) + 1:sh, cx:cx + sw * (wo - 1) + 1:sw, :]
    return out, centre


def lpsc(x, weights, *, kernel_size, rings, sectors, growth_rate, initial_angle=0.0, strides=1,
         padding="same", pooling="mean", groups=1, data_format="channels_last"):
    """y[p,o] = Σ_c Σ_{l,a} W[l,a,c,o]·pool_{Ω(l,a)} x[s·p+q, c] + Σ_c w0[c,o]·x[s·p, c] + b[o].

    `weights`: {"kernel": (rings, sectors, C/groups, O), "center_kernel": (C/groups, O)
    (optional), "bias": (O,) (optional)}.
    """
    if data_format == "channels_first":
        x = np.moveaxis(x, 1, -1)
    pooled, centre = pooled_regions(x, kernel_size, rings, sectors, growth_rate, initial_angle,
                                    strides, padding, pooling)
    kernel = weights["kernel"]
    cin_g, out = kernel.shape[2], kernel.shape[3]
    out_g = out // groups
    ys = []
    for g in range(groups):
        cs = slice(g * cin_g, (g + 1) * cin_g)
        os_ = slice(g * out_g, (g + 1) * out_g)
        y = np.einsum("bhwcla,laco->bhwo", pooled[..., cs, :, :], kernel[..., os_])
        if "center_kernel" in weights:
            y = y + np.einsum("bhwc,co->bhwo", centre[..., cs], weights["center_kernel"][:, os_])
        ys.append(y)
    y = np.concatenate(ys, -1)
    if "bias" in weights:
        y = y + weights["bias"]
    if data_format == "channels_first":
        y = np.moveaxis(y, -1, 1)
    return y


def official_tile_forward(x, tile_weight, center_weight, center_bias, *, kernel_size, rings, sectors,
                          growth_rate, strides=1):
    """The official layer's computation, NCHW: region means written into a (2·rings)×(sectors/2)
    tile per position (region (l, a) at row rings−1−l, col sectors/2−1−a for a < sectors/2, else
    row rings+l, col a−sectors/2), a Conv2d with kernel = stride = tile size, plus the 1×1
    centre conv with bias."""
    x_nhwc = np.moveaxis(x, 1, -1)
    pooled, centre = pooled_regions(x_nhwc, kernel_size, rings, sectors, growth_rate, 0.0, strides)
    b, ho, wo, c = pooled.shape[:4]
    half = sectors // 2
    tile = np.zeros((b, ho, wo, c, 2 * rings, half))
    for l in range(rings):
        for a in range(sectors):
            row, col = (rings - 1 - l, half - 1 - a) if a < half else (rings + l, a - half)
            tile[..., row, col] = pooled[..., l, a]
    y = np.einsum("bhwcrk,ocrk->bhwo", tile, tile_weight)
    y = y + np.einsum("bhwc,oc->bhwo", centre, center_weight[:, :, 0, 0]) + center_bias
    return np.moveaxis(y, -1, 1)
