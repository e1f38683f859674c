"""bench: the memory-traffic floor and the convolution calls read off a compiled program."""
import jax
import jax.numpy as jnp
import pytest

from clip2protect_jax import bench


def test_hlo_traffic_counts_each_instruction_once():
  """x * 2 + 1 on 1000 floats fuses into one elementwise instruction: it reads 4000 bytes
  and writes 4000; a second output of another dtype and size adds its own bytes."""
  x = jax.ShapeDtypeStruct((1000,), jnp.float32)
  one = bench.hlo_traffic(jax.jit(lambda v: v * 2 + 1).lower(x).compile())
  assert sum(r["bytes"] for r in one) == 8000
  assert one[0]["category"] == "loop fusion (elementwise)"
  two = bench.hlo_traffic(jax.jit(
      lambda v: (v * 2 + 1, jnp.sum(v[:500]).astype(jnp.bfloat16))).lower(x).compile())
  assert sum(r["bytes"] for r in two) >= 8000 + 2


def test_hlo_traffic_counts_only_the_slices_a_fusion_reads():
  """Two fusions each read 100 of 1000 floats: 400 bytes read + 400 written each, not the
  whole 4000-byte operand (on a GPU, one large gemm output sliced by many fusions)."""
  x = jax.ShapeDtypeStruct((1000,), jnp.float32)
  rows = bench.hlo_traffic(jax.jit(
      lambda v: (jnp.sin(v[:100]), jnp.cos(v[500:600]))).lower(x).compile())
  assert [r["bytes"] for r in rows] == [800, 800]


def test_a_fusion_reads_only_the_slices_of_its_slices():
  """A strided slice of a slice (as XLA's GPU backend leaves the gradient of a stride-2
  placement, upsample_impl='taps') reads the inner slice's bytes: 50 of 1000 floats."""
  text = """%fused_slices (param_0.1: f32[1000]) -> f32[50] {
  %param_0.1 = f32[1000]{0} parameter(0)
  %slice.1 = f32[999]{0} slice(%param_0.1), slice={[1:1000]}
  %slice.2 = f32[50]{0} slice(%slice.1), slice={[0:999:20]}
  ROOT %negate.1 = f32[50]{0} negate(%slice.2)
}
"""
  assert bench._sliced_parameter_reads(text) == {"fused_slices": {0: 200}}


class _LoweredWithoutCostAnalysis:
  """What jax 0.11.2's Lowered answers on a GPU (a PJRT plugin): no cost analysis."""

  def cost_analysis(self):
    return None


def test_flops_come_from_a_cpu_lowering_where_the_backend_reports_none():
  """A 64x32 @ 32x16 product is 2*64*32*16 FLOPs, whether the lowered program reports them
  or (as on a GPU) the same function lowered for the CPU has to."""
  fn = jax.jit(lambda a, b: a @ b)
  args = (jnp.ones((64, 32)), jax.ShapeDtypeStruct((32, 16), jnp.float32))
  flops = 2 * 64 * 32 * 16
  assert bench.unfused_cost_analysis(fn, args, fn.lower(*args))["flops"] == flops
  assert bench.unfused_cost_analysis(fn, args, _LoweredWithoutCostAnalysis())["flops"] == flops


def test_kernels_in_a_command_buffer_map_to_their_fusions():
  """Kernel names the H200 profile showed inside CUDA-graph command buffers: XLA's own map
  back to their instructions, library kernels do not."""
  lines = {"input_transpose_fusion.59": "...", "loop_and_fusion": "...",
           "command_buffer.166": "..."}
  assert bench.kernel_instruction("input_transpose_fusion_59", lines) == (
      "input_transpose_fusion.59")
  assert bench.kernel_instruction("loop_and_fusion", lines) == "loop_and_fusion"
  assert bench.kernel_instruction("input_transpose_fusion_79", lines) is None
  assert bench.kernel_instruction(
      "void cutlass::Kernel2<cutlass_80_simt_sgemm_128x64_8x5_nn_align1>(x)", lines) is None


# Two instruction lines of a tuning step compiled for an H100 (tools/benchmark.py
# --target=h100, batch 8, default generator), shortened: a per-image weight gradient that
# XLA ran as a forward convolution whose kernel is the 1024x1024 gradient map, and a
# reverse fusion whose operand is a gemm fusion.
_GPU_LINES = (
    '  %cudnn-conv.269 = (f32[32,1,1,24]{3,2,1,0}, u8[0]{0}) custom-call(%get-tuple-element'
    '.856, %input_transpose_fusion.25), window={size=1024x1024}, dim_labels=b01f_o01i->b01f,'
    ' feature_group_count=8, custom_call_target="__cudnn$convForward", metadata={op_name='
    '"jit(step)/vmap(transpose(jvp(Generator)))/synthesis/to_rgbs_7/conv_general_dilated"}',
    '  %cudnn-conv-bw-filter.22 = (f32[1024,3,3,512]{3,2,1,0}, u8[0]{0}) custom-call('
    '%bitcast.1, %bitcast.2), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, '
    'feature_group_count=2, custom_call_target="__cudnn$convBackwardFilter"',
    '  %loop_reverse_fusion.7 = f32[64,1,3,3,128]{4,3,2,1,0} fusion(%gemm_fusion_dot.110), '
    'kind=kLoop, calls=%fused_reverse.7')


def test_gpu_instruction_kinds():
  """Categories come from the instruction itself, not its operands' names; a forward conv
  with a feature-map-sized window is reported as a weight gradient that missed cuDNN's
  backward-filter call."""
  assert [bench.hlo_category(line) for line in _GPU_LINES] == [
      "conv, forward (cuDNN)", "conv, weight gradient (cuDNN)", "loop fusion (elementwise)"]

  class Text:
    def as_text(self):
      return "\n".join(_GPU_LINES)

  assert bench.conv_calls(Text()) == {
      "convForward": 1, "weight gradient as forward conv (kernel = feature map)": 1,
      "convBackwardFilter": 1}


_PLAN_SCRIPT = """
import jax, jax.numpy as jnp
from clip2protect_jax import bench
from clip2protect_jax.models.layers import conv2d
device = bench.gpu_target_device("h100")
def per_image_weight_grads(impl, batch=4, k=3, padding=None):
  def loss(w, x):
    return jnp.sum(conv2d(x, w, None, impl, padding) ** 2)
  step = jax.jit(jax.vmap(jax.grad(loss)))
  args = bench.place_abstract((jax.ShapeDtypeStruct((batch, k, k, 32, 32), jnp.float32),
                               jax.ShapeDtypeStruct((batch, 1, 64, 64, 32), jnp.float32)),
                              device)
  return bench.conv_calls(step.lower(*args).compile())
print(per_image_weight_grads("xla"))
print(per_image_weight_grads("grouped"))
# upsample_impl='phases': a 2x2 conv over an input padded ahead, at batch 1 and 4
print(per_image_weight_grads("grouped", batch=1, k=2, padding=((0, 0), (0, 0))))
print(per_image_weight_grads("grouped", batch=4, k=2, padding=((0, 0), (0, 0))))
"""


def test_gpu_plan_of_per_image_weight_gradients():
  """Compiled for an H100 without one (needs JAX's CUDA plugin: `bash tools/setup.sh
  gpu-plan`, then run this file with .venv-gpu-plan/bin/python; skipped without it): JAX's
  vmap(grad) weight gradient becomes a forward conv with the 64x64 gradient map as its
  kernel, conv_impl='grouped' becomes cuDNN's backward-filter call, also for the 2x2
  unpadded conv of phase-split upsampling at batch 1 and 4."""
  import ast
  import os
  import subprocess
  import sys
  pytest.importorskip("jax_plugins.xla_cuda12",
                      reason="JAX's CUDA plugin is not installed (bash tools/setup.sh gpu-plan)")
  out = subprocess.run([sys.executable, "-c", _PLAN_SCRIPT], capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  xla, *grouped = map(ast.literal_eval, out.stdout.strip().splitlines()[-4:])
  assert xla.get("weight gradient as forward conv (kernel = feature map)") == 1
  assert "convBackwardFilter" not in xla
  for calls in grouped:
    assert calls.get("convBackwardFilter") == 1
    assert "weight gradient as forward conv (kernel = feature map)" not in calls
