// Bilinear sampling math of multi-scale deformable attention, shared by the CPU and CUDA kernels.
//
// A sampling location (x, y) in [0, 1] maps to the pixel coordinates x * width - 0.5 and y * height - 0.5, the
// convention of grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False). The four neighbouring
// pixels are the corners; corners outside the map read zeros, so they get no weight and receive no gradient.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace referformer::ops::detail {

// Corners of one bilinear sample, in the order (y0, x0), (y0, x1), (y1, x0), (y1, x1).
template <typename T>
struct BilinearCorners {
  int64_t index[4];  // spatial index y * width + x inside the level (0 for corners outside the map)
  bool inside[4];    // whether the corner lies inside the map
  T weight[4];       // interpolation weight
  T weight_dx[4];    // derivative of the weight w.r.t. the pixel x coordinate
  T weight_dy[4];    // derivative of the weight w.r.t. the pixel y coordinate
};

// Fills `corners` for the location (loc_x, loc_y) on a height x width level. Returns false when no corner lies
// inside the map, in which case the sample and all its gradients are zero and `corners` is left unset.
template <typename T>
C10_HOST_DEVICE inline bool bilinear_corners(
    T loc_x,
    T loc_y,
    int64_t height,
    int64_t width,
    BilinearCorners<T>& corners) {
  const T x = loc_x * static_cast<T>(width) - static_cast<T>(0.5);
  const T y = loc_y * static_cast<T>(height) - static_cast<T>(0.5);
  // Written as negated comparisons so that NaN locations are rejected too.
  if (!(x >= T(-1) && y >= T(-1) && x < static_cast<T>(width) && y < static_cast<T>(height))) {
    return false;
  }
  const T x0_floor = ::floor(x);
  const T y0_floor = ::floor(y);
  const int64_t x0 = static_cast<int64_t>(x0_floor);
  const int64_t y0 = static_cast<int64_t>(y0_floor);
  const T lx = x - x0_floor;
  const T ly = y - y0_floor;
  const T hx = T(1) - lx;
  const T hy = T(1) - ly;

  const int64_t xs[2] = {x0, x0 + 1};
  const int64_t ys[2] = {y0, y0 + 1};
  const T wx[2] = {hx, lx};
  const T wy[2] = {hy, ly};
  // d(wx[i]) / dx and d(wy[j]) / dy.
  const T dwx[2] = {T(-1), T(1)};
  const T dwy[2] = {T(-1), T(1)};

  bool any_inside = false;
  for (int j = 0; j < 2; ++j) {
    for (int i = 0; i < 2; ++i) {
      const int c = 2 * j + i;
      const bool inside = xs[i] >= 0 && xs[i] < width && ys[j] >= 0 && ys[j] < height;
      corners.inside[c] = inside;
      corners.index[c] = inside ? ys[j] * width + xs[i] : 0;
      corners.weight[c] = inside ? wy[j] * wx[i] : T(0);
      corners.weight_dx[c] = inside ? wy[j] * dwx[i] : T(0);
      corners.weight_dy[c] = inside ? dwy[j] * wx[i] : T(0);
      any_inside = any_inside || inside;
    }
  }
  return any_inside;
}

} // namespace referformer::ops::detail
