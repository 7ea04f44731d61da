// ONNX GridSample's per-pixel math, written once for the CPU and CUDA kernels: a normalized grid coordinate
// to a source pixel coordinate (align_corners, padding_mode border or reflection, with the derivative the
// grid gradient needs), and the bilinear, nearest or bicubic weights of the source pixels around it.
#pragma once

#include <cmath>

#include "engine/kernels/hd.h"

namespace trainer::engine::kernels {

enum class GridPadding : int { zeros = 0, border = 1, reflection = 2 };

// A source coordinate and d(coordinate)/d(grid value).
template <class T>
struct GridCoord {
  T x;
  T dx;
};

// Reflects x into [lo, hi] as a mirror does, repeatedly; *sign becomes -1 where an odd number of reflections
// reversed the direction.
template <class T>
TRAINER_HD T grid_reflect(T x, T lo, T hi, T* sign) {
  *sign = T(1);
  if (hi <= lo) return lo;
  const T span = hi - lo;
  T d = x - lo;
  if (d < T(0)) {
    d = -d;
    *sign = -*sign;
  }
  const T flips = floor(d / span);
  const T extra = d - flips * span;
  if (fmod(flips, T(2)) == T(0)) return lo + extra;
  *sign = -*sign;
  return hi - extra;
}

// The source coordinate along an axis of `size` pixels for the normalized coordinate g (-1: the first pixel's
// centre with align_corners, its outer edge without; 1: the last's).
template <class T>
TRAINER_HD GridCoord<T> grid_source(T g, int64_t size, bool align_corners, GridPadding padding) {
  const T n = T(size);
  GridCoord<T> c;
  if (align_corners) {
    c.dx = (n - T(1)) / T(2);
    c.x = (g + T(1)) * c.dx;
  } else {
    c.dx = n / T(2);
    c.x = ((g + T(1)) * n - T(1)) / T(2);
  }
  if (padding == GridPadding::reflection) {
    T sign;
    c.x = align_corners ? grid_reflect(c.x, T(0), n - T(1), &sign)
                        : grid_reflect(c.x, T(-0.5), n - T(0.5), &sign);
    c.dx *= sign;
  }
  if (padding != GridPadding::zeros) {
    // Border, and reflection without align_corners, whose mirror at -0.5 can leave a coordinate in [-0.5, 0).
    if (c.x < T(0)) {
      c.x = T(0);
      c.dx = T(0);
    } else if (c.x > n - T(1)) {
      c.x = n - T(1);
      c.dx = T(0);
    }
  }
  return c;
}

// Nearest: rounds half to even, as ONNX's reference (and nearbyint) does.
template <class T>
TRAINER_HD int64_t grid_nearest(T x) {
  return static_cast<int64_t>(rint(x));
}

TRAINER_HD bool grid_inside(int64_t i, int64_t size) {
  return i >= 0 && i < size;
}

enum class GridMode : int { bilinear = 0, nearest = 1, bicubic = 2 };

// X [n, c, h, w] sampled at grid [n, oh, ow, 2].
struct GridGeom {
  int64_t n = 0, c = 0, h = 0, w = 0, oh = 0, ow = 0;
  bool align_corners = false;
  GridMode mode = GridMode::bilinear;
  GridPadding padding = GridPadding::zeros;
};

// Where output pixel p (of n * oh * ow, grid order) reads: the source coordinates and, for bilinear, the
// top-left tap (x0, y0) with the weights of its column and row neighbours (x0 + 1, y0 + 1); for nearest, the
// pixel (x0, y0); for bicubic, the fractions wx1, wy1 past the pixel (x0, y0) of the 4 x 4 taps from
// (x0 - 1, y0 - 1), whose coordinates the padding then moves one by one (as PyTorch, which ONNX follows).
template <class T>
struct GridTaps {
  GridCoord<T> cx, cy;
  int64_t x0 = 0, y0 = 0;
  T wx1 = 0, wy1 = 0;
};

template <class T>
TRAINER_HD GridTaps<T> grid_taps(const GridGeom& g, const T* grid, int64_t p) {
  GridTaps<T> t;
  // Bicubic pads each tap instead of the coordinate.
  const GridPadding pad = g.mode == GridMode::bicubic ? GridPadding::zeros : g.padding;
  t.cx = grid_source(grid[2 * p], g.w, g.align_corners, pad);
  t.cy = grid_source(grid[2 * p + 1], g.h, g.align_corners, pad);
  // A coordinate that is not finite, or too far out to convert to an index, samples outside the image
  // (zeros), alike on every backend.
  if (!(t.cx.x > T(-1e9) && t.cx.x < T(1e9))) t.cx.x = T(-2);
  if (!(t.cy.x > T(-1e9) && t.cy.x < T(1e9))) t.cy.x = T(-2);
  if (g.mode == GridMode::nearest) {
    t.x0 = grid_nearest(t.cx.x);
    t.y0 = grid_nearest(t.cy.x);
    return t;
  }
  const T fx = floor(t.cx.x), fy = floor(t.cy.x);
  t.x0 = static_cast<int64_t>(fx);
  t.y0 = static_cast<int64_t>(fy);
  t.wx1 = t.cx.x - fx;
  t.wy1 = t.cy.x - fy;
  return t;
}

// Pixel (y, x) of an [h, w] plane, zero outside it.
template <class T>
TRAINER_HD T grid_pixel(const T* plane, const GridGeom& g, int64_t y, int64_t x) {
  return grid_inside(y, g.h) && grid_inside(x, g.w) ? plane[y * g.w + x] : T(0);
}

// Bicubic: the convolution weights (A = -0.75) of the taps at -1, 0, 1, 2 from the pixel a fraction f before
// the coordinate, and their derivatives in f.
template <class T>
TRAINER_HD void grid_cubic_weights(T f, T* w, T* dw) {
  const T A = T(-0.75);
  auto near = [A](T x) { return ((A + T(2)) * x - (A + T(3))) * x * x + T(1); };       // |x| <= 1
  auto far = [A](T x) { return ((A * x - T(5) * A) * x + T(8) * A) * x - T(4) * A; };  // 1 < |x| < 2
  auto dnear = [A](T x) { return (T(3) * (A + T(2)) * x - T(2) * (A + T(3))) * x; };
  auto dfar = [A](T x) { return (T(3) * A * x - T(10) * A) * x + T(8) * A; };
  w[0] = far(f + T(1));
  w[1] = near(f);
  w[2] = near(T(1) - f);
  w[3] = far(T(2) - f);
  dw[0] = dfar(f + T(1));
  dw[1] = dnear(f);
  dw[2] = -dnear(T(1) - f);
  dw[3] = -dfar(T(2) - f);
}

// A bicubic tap's index along an axis of `size` pixels after the padding moves it; -1 outside (zeros).
TRAINER_HD int64_t grid_cubic_index(int64_t i, int64_t size, bool align_corners, GridPadding padding) {
  if (padding == GridPadding::zeros) return i >= 0 && i < size ? i : -1;
  double x = static_cast<double>(i);
  if (padding == GridPadding::reflection) {
    double sign;
    x = align_corners ? grid_reflect(x, 0.0, size - 1.0, &sign) : grid_reflect(x, -0.5, size - 0.5, &sign);
  }
  x = x < 0 ? 0 : x > size - 1 ? size - 1 : x;
  return static_cast<int64_t>(x);
}

// Calls f(y, x, weight, dweight/dx, dweight/dy) for each of the 16 bicubic taps inside the plane.
template <class T, class F>
TRAINER_HD void grid_cubic_taps(const GridGeom& g, const GridTaps<T>& t, F&& f) {
  T wx[4], dwx[4], wy[4], dwy[4];
  grid_cubic_weights(t.wx1, wx, dwx);
  grid_cubic_weights(t.wy1, wy, dwy);
  for (int i = 0; i < 4; ++i) {
    const int64_t y = grid_cubic_index(t.y0 - 1 + i, g.h, g.align_corners, g.padding);
    if (y < 0) continue;
    for (int j = 0; j < 4; ++j) {
      const int64_t x = grid_cubic_index(t.x0 - 1 + j, g.w, g.align_corners, g.padding);
      if (x >= 0) f(y, x, wy[i] * wx[j], wy[i] * dwx[j], dwy[i] * wx[j]);
    }
  }
}

// The sampled value of one [h, w] plane.
template <class T>
TRAINER_HD T grid_sample_plane(const T* plane, const GridGeom& g, const GridTaps<T>& t) {
  if (g.mode == GridMode::nearest) return grid_pixel(plane, g, t.y0, t.x0);
  if (g.mode == GridMode::bicubic) {
    T v = 0;
    grid_cubic_taps(g, t, [&](int64_t y, int64_t x, T w, T, T) { v += w * plane[y * g.w + x]; });
    return v;
  }
  const T v00 = grid_pixel(plane, g, t.y0, t.x0), v01 = grid_pixel(plane, g, t.y0, t.x0 + 1);
  const T v10 = grid_pixel(plane, g, t.y0 + 1, t.x0), v11 = grid_pixel(plane, g, t.y0 + 1, t.x0 + 1);
  return (T(1) - t.wy1) * ((T(1) - t.wx1) * v00 + t.wx1 * v01) + t.wy1 * ((T(1) - t.wx1) * v10 + t.wx1 * v11);
}

// Adds one plane's contribution dy * d(sample)/d(source x, source y) to (*gx, *gy) (bilinear and bicubic).
template <class T>
TRAINER_HD void grid_coord_grad(const T* plane, const GridGeom& g, const GridTaps<T>& t, T dy, T* gx, T* gy) {
  if (g.mode == GridMode::bicubic) {
    grid_cubic_taps(g, t, [&](int64_t y, int64_t x, T, T dwx, T dwy) {
      *gx += dy * dwx * plane[y * g.w + x];
      *gy += dy * dwy * plane[y * g.w + x];
    });
    return;
  }
  const T v00 = grid_pixel(plane, g, t.y0, t.x0), v01 = grid_pixel(plane, g, t.y0, t.x0 + 1);
  const T v10 = grid_pixel(plane, g, t.y0 + 1, t.x0), v11 = grid_pixel(plane, g, t.y0 + 1, t.x0 + 1);
  *gx += dy * ((T(1) - t.wy1) * (v01 - v00) + t.wy1 * (v11 - v10));
  *gy += dy * ((T(1) - t.wx1) * (v10 - v00) + t.wx1 * (v11 - v01));
}

// Adds dy times the sample's weights into an [h, w] plane of dX.
template <class T>
TRAINER_HD void grid_scatter_plane(T* plane, const GridGeom& g, const GridTaps<T>& t, T dy) {
  auto add = [&](int64_t y, int64_t x, T wgt) {
    if (grid_inside(y, g.h) && grid_inside(x, g.w)) plane[y * g.w + x] += dy * wgt;
  };
  if (g.mode == GridMode::nearest) {
    add(t.y0, t.x0, T(1));
    return;
  }
  if (g.mode == GridMode::bicubic) {
    grid_cubic_taps(g, t, [&](int64_t y, int64_t x, T w, T, T) { plane[y * g.w + x] += dy * w; });
    return;
  }
  add(t.y0, t.x0, (T(1) - t.wy1) * (T(1) - t.wx1));
  add(t.y0, t.x0 + 1, (T(1) - t.wy1) * t.wx1);
  add(t.y0 + 1, t.x0, t.wy1 * (T(1) - t.wx1));
  add(t.y0 + 1, t.x0 + 1, t.wy1 * t.wx1);
}

}  // namespace trainer::engine::kernels
