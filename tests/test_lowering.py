"""What an accelerator runs, exported on this CPU for TPU and CUDA (`jax.export` lowers for a
platform that is not present): configs/so.py's train step with its real architectures at
random weights (bfloat16, batch 256, an 8-device `AbstractMesh`), the evaluation encoders'
pooled and token programs, the device search and the losses on their own. `jax.export`
refuses a custom call without a compatibility guarantee; these tests also find none at all
and no host callback (a step that calls the host waits for it)."""

import itertools

import jax
import jax.numpy as jnp
from jax import export
import pytest
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec as P

from benchmarks.common import ARCHITECTURES
from tests.helpers import ROOT, load_config
from optical_jax import losses
from optical_jax.config import ConfigError, validate
from optical_jax.evaluation.retrieval import TextEncoder
from optical_jax.evaluation.search import top_k_step
from optical_jax.training.lowering import (custom_call_targets, host_callbacks, random_encoder,
                                           random_models, so_config, step_argument_shapes)
from optical_jax.training.state import make_optimizer
from optical_jax.runtime.mesh import data_mesh
from optical_jax.training.step import make_train_step

pytestmark = pytest.mark.slow  # every test here runs over ~5 s

PLATFORMS = ("tpu", "cuda")
MESH = AbstractMesh((8,), ("data",))


def so_step(mesh=MESH, **fields):
  """so.py's step over `mesh` and its arguments' shapes, with `fields` changed."""
  config = so_config()
  for dotted, value in fields.items():
    section, name = dotted.split(".")
    config[section][name] = value
  models = random_models(config, ARCHITECTURES["bge-small"], ARCHITECTURES["e5-small"])
  optimizer = make_optimizer(config)
  return (config, make_train_step(config, models, optimizer, mesh),
          step_argument_shapes(config, models, optimizer, mesh, config.train.batch_size,
                               config.data.max_length))


def exported(fn, args, platform, *, disabled_checks=(), **kwargs):
  result = export.export(fn, platforms=[platform], disabled_checks=disabled_checks)(
      *args, **kwargs)
  assert host_callbacks(result) == set()
  return result


@pytest.mark.parametrize("fields", [{}, {"ot.gradient": "implicit"}],
                         ids=["so.py", "implicit"])
def test_so_step_exports_with_no_custom_call_or_host_callback(fields):
  config, step, args = so_step(**fields)
  for platform in PLATFORMS:  # one trace, lowered for each
    validate(config, devices=8, backend="gpu" if platform == "cuda" else platform)
    program = exported(step, args, platform)
    assert custom_call_targets(program) == set()
    assert program.nr_devices == 8
    assert "all_reduce" in program.mlir_module()  # the gradients' pmean over the devices


def test_cudnn_attention_exports_for_cuda_with_only_cudnns_calls_and_is_refused_off_gpus(
    monkeypatch):
  """cuDNN's fused attention has no export guarantee: it is exported with the documented
  `DisabledSafetyCheck.custom_call` for its targets, which are then its only custom calls.
  `validate` decides by the platform of the devices the run uses. (JAX lowers cuDNN's call
  on a concrete mesh only: this host's one device stands for the GPU.)"""
  from jax._src.cudnn import fused_attention_stablehlo
  # JAX asks the local cuDNN for its version while tracing; this host has none, so the test
  # answers for a GPU host's (9.10).
  monkeypatch.setattr(fused_attention_stablehlo, "check_cudnn_version", lambda: 91000)
  config, step, args = so_step(data_mesh(), **{"model.attention": "cudnn"})
  validate(config, devices=8, backend="gpu")
  for platform in ("tpu", "cpu"):
    with pytest.raises(ConfigError) as refused:
      validate(config, devices=8, backend=platform)
    assert str(refused.value) == (
        "config.model.attention 'cudnn' needs an NVIDIA GPU and config.model.dtype 'bfloat16' "
        f"(here: {platform} devices, 'bfloat16'); use 'xla'")
  with pytest.raises(ValueError, match="no compatibility guarantees"):
    export.export(step, platforms=["cuda"])(*args)
  targets = ("__cudnn$fmhaScaleBiasSoftmax", "__cudnn$fmhaScaleBiasSoftmaxBackward")
  program = exported(step, args, "cuda", disabled_checks=[
      export.DisabledSafetyCheck.custom_call(t) for t in targets])
  calls = custom_call_targets(program)
  assert calls and calls <= set(targets), calls


def test_evaluation_encoders_and_the_device_search_export():
  config = so_config()
  encoder = TextEncoder(random_encoder(ARCHITECTURES["e5-small"], config, student=True),
                        data_mesh(), max_length=256, dtype="bfloat16")
  rows = encoder.batch_size * encoder.local_mesh.size
  split = NamedSharding(encoder.local_mesh, P("data"))
  ids = jax.ShapeDtypeStruct((rows, 256), jnp.int32, sharding=split)
  for name, platform in itertools.product(("pooled", "tokens"), PLATFORMS):
    program = exported(encoder.programs[name], (encoder.encoder.params, ids, ids), platform)
    assert custom_call_targets(program) == set(), name
  queries, candidates, chunk, dim = 200, 200, 32768, 384
  state = (jax.ShapeDtypeStruct((queries, candidates), jnp.float32),
           jax.ShapeDtypeStruct((queries, candidates), jnp.int32),
           jax.ShapeDtypeStruct((queries, candidates, dim), jnp.float32),
           jax.ShapeDtypeStruct((), jnp.float32))
  for platform in PLATFORMS:
    search = exported(top_k_step, (state, jax.ShapeDtypeStruct((queries, dim), jnp.float32),
                                    jax.ShapeDtypeStruct((chunk, dim), jnp.float32),
                                    jax.ShapeDtypeStruct((chunk,), jnp.int32)), platform,
                      cosine=True)
    assert custom_call_targets(search) == set()


def test_the_losses_alone_export_with_their_gradients():
  """What another JAX project imports from optical_jax.losses, differentiated."""
  s = jax.ShapeDtypeStruct((16, 24, 32), jnp.float32)
  t = jax.ShapeDtypeStruct((16, 20, 32), jnp.float32)
  sm, tm = (jax.ShapeDtypeStruct(x.shape[:2], jnp.bool_) for x in (s, t))
  pooled = jax.ShapeDtypeStruct((16, 32), jnp.float32)
  cases = {f"ot {mode}": (lambda a, b, c, d, mode=mode: losses.ot_distillation_loss(
               a, b, c, d, gradient=mode, epsilon=0.1), (s, t, sm, tm))
           for mode in ("stop_gradient", "implicit", "unroll")}
  cases |= {"mse": (losses.mse_distillation_loss, (pooled, pooled)),
            "contrastive": (losses.contrastive_distillation_loss, (pooled, pooled)),
            "maxsim": (losses.maxsim_contrastive_loss, (s, t, sm, tm))}
  for name, (loss, args) in cases.items():
    grad = jax.jit(jax.value_and_grad(lambda *a, loss=loss: jnp.mean(loss(*a))))
    for platform in PLATFORMS:
      program = exported(grad, args, platform)
      assert custom_call_targets(program) == set(), name


def test_the_lowered_settings_are_configs_so_pys():
  """`so_config` restates so.py's step settings for the lowering and the benchmark: a drift
  (as when so.py took idf marginals) would prove a step that so.py no longer runs."""
  so, lowered = load_config(ROOT / "configs" / "so.py"), so_config()
  for field in ("loss", "model.student_side", "model.dtype", "ot.marginals", "ot.center",
                "ot.epsilon", "data.max_length", "train.batch_size"):
    section, _, name = field.rpartition(".")
    get = lambda c: c[section][name] if section else c[name]
    assert get(lowered) == get(so), field
