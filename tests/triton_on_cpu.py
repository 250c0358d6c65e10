"""pytest plugin: the operator's CPU tests through the Triton kernels, under Triton's interpreter.

``equifast.ops.equivariance_scores`` on CPU tensors is routed to :mod:`equifast.ops_triton`
(float32 products, as the CPU operator's), so that tests/test_ops.py's battery (the hypothesis
property test against the reference, ties across lanes, tiny and huge rows, dead channels,
sparse maps, ...) checks the kernels a GPU would run:

    PYTHONPATH=tests TRITON_INTERPRET=1 EQUIFAST_TRITON_SINGLE_PASS=1 python -m pytest -p triton_on_cpu \\
        tests/test_ops.py -k "not opcheck and not compile and not export and not torchscript \\
        and not meta_shapes and not isa and not told_not_to"

(about 8 minutes a way on 2 cores; EQUIFAST_TRITON_SINGLE_PASS=0 for the two passes). The
deselected tests trace or register the operator itself, or check the CPU operator's own index
check, which the Triton kernels, as the CUDA ones, skip when told to.
"""
from equifast import ops

_compiled = ops.equivariance_scores


def _through_triton(fx, ftx, a_index, b_index, centered, eps, tensor_cores=True,
                    check_indices=True):
    if fx.device.type != "cpu" or not ops.load():
        return _compiled(fx, ftx, a_index, b_index, centered, eps, tensor_cores, check_indices)
    # float32 products, as the CPU operator's
    return ops._triton_scores(fx, ftx, a_index, b_index, centered, eps, False, check_indices)


ops.equivariance_scores = _through_triton
