// A C shim over two of libtorch's own oneDNN operators, which tch does not bind: they are
// registered in the `mkldnn` operator namespace (what torch.compile's CPU freezing uses), not in
// ATen's. Called through the dispatcher boxed, so no C++ signature has to match the schema:
//   mkldnn::_reorder_linear_weight(Tensor self, int? batch_size=None) -> Tensor
//   mkldnn::_linear_pointwise(Tensor X, Tensor W, Tensor? B, str attr, Scalar?[] scalars,
//                             str? algorithm) -> Tensor
// Tensors cross as `at::Tensor*`, the same handles tch's own C API passes (tch::Tensor::as_ptr /
// from_ptr). Errors come back as a malloc'd message, freed with flowscore_onednn_free_error.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {

char* message(const std::string& what) {
  return strdup(what.c_str());
}

// The operator's handle, or null where this libtorch does not register it.
const c10::OperatorHandle* find(const char* name) {
  auto op = c10::Dispatcher::singleton().findSchema({name, ""});
  return op.has_value() ? new c10::OperatorHandle(*op) : nullptr;  // one per operator, kept
}

char* missing(const char* name) {
  return message(std::string("operator not registered in this libtorch: ") + name);
}

}  // namespace

extern "C" {

// Whether this libtorch registers both operators.
bool flowscore_onednn_available() {
  auto& d = c10::Dispatcher::singleton();
  return d.findSchema({"mkldnn::_reorder_linear_weight", ""}).has_value() &&
         d.findSchema({"mkldnn::_linear_pointwise", ""}).has_value();
}

// An [out, in] f32 weight in oneDNN's blocked layout, or null with *error set.
at::Tensor* flowscore_onednn_pack(const at::Tensor* weight, char** error) {
  static const c10::OperatorHandle* op = find("mkldnn::_reorder_linear_weight");
  if (op == nullptr) {
    *error = missing("mkldnn::_reorder_linear_weight");
    return nullptr;
  }
  try {
    torch::jit::Stack stack{c10::IValue(*weight), c10::IValue()};
    op->callBoxed(&stack);
    return new at::Tensor(stack.at(0).toTensor());
  } catch (const std::exception& e) {
    *error = message(e.what());
    return nullptr;
  }
}

// x Wᵀ + b for a dense f32 [rows, in] x and a packed W, with ReLU applied if `relu`; a new
// dense [rows, out] tensor, or null with *error set.
at::Tensor* flowscore_onednn_linear(const at::Tensor* x, const at::Tensor* packed, const at::Tensor* bias,
                                    bool relu, char** error) {
  static const c10::OperatorHandle* op = find("mkldnn::_linear_pointwise");
  if (op == nullptr) {
    *error = missing("mkldnn::_linear_pointwise");
    return nullptr;
  }
  try {
    torch::jit::Stack stack{c10::IValue(*x),
                            c10::IValue(*packed),
                            c10::IValue(*bias),
                            c10::IValue(std::string(relu ? "relu" : "none")),
                            c10::IValue(c10::List<std::optional<at::Scalar>>()),
                            c10::IValue()};
    op->callBoxed(&stack);
    return new at::Tensor(stack.at(0).toTensor());
  } catch (const std::exception& e) {
    *error = message(e.what());
    return nullptr;
  }
}

void flowscore_onednn_free_error(char* error) {
  free(error);
}

}  // extern "C"
