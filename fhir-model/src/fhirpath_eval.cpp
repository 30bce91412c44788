// FHIRPath evaluator entry points and the per-item iteration used by where/select/exists/all.
#include "fhirpath_evaluator.hpp"

namespace yilian::fhir::fhirpath {
namespace detail {

collection evaluator::iterate_where(const collection& in, const ast& crit, bool select) {
  collection out;
  collection one(1);
  frame g;
  g.this_ = &one;
  for (std::size_t i = 0; i < in.size(); ++i) {
    one[0] = in[i];
    g.index = static_cast<std::int64_t>(i);
    collection r = eval(crit, g);
    if (select) {
      for (item& x : r) out.push_back(std::move(x));
    } else {
      auto t = truth(r, "where");
      if (t && *t) out.push_back(in[i]);
    }
  }
  return out;
}

}  // namespace detail


item resource_item(const value& resource, const definitions& defs) {
  item it;
  it.kind = item_kind::node;
  it.node = &resource;
  if (const value* rt = resource.find("resourceType"); rt && rt->is_string()) {
    if (const type_def* td = defs.find_type(rt->text())) it.fhir_type = td->name;
  }
  return it;
}

item node_item(const value& element, std::string_view fhir_type, const definitions& defs) {
  item it;
  it.kind = item_kind::node;
  it.node = &element;
  if (const type_def* td = defs.find_type(fhir_type)) it.fhir_type = td->name;
  return it;
}

const std::string& expression::text() const noexcept {
  static const std::string none;
  return program_ ? program_->text : none;
}

collection expression::evaluate(const value& resource, const evaluate_options& options) const {
  const definitions& defs = options.defs ? *options.defs : definitions::r4();
  collection input{resource_item(resource, defs)};
  if (options.track_paths) input[0].path = std::string(input[0].fhir_type);
  return evaluate(input, options.resource ? options.resource : &resource, options);
}

collection expression::evaluate(const collection& input, const value* resource, const evaluate_options& options) const {
  if (!program_) throw evaluation_error("empty expression");
  const definitions& defs = options.defs ? *options.defs : definitions::r4();
  const value* res = options.resource ? options.resource : resource;
  const value* root = options.root_resource ? options.root_resource : res;
  detail::evaluator ev(options, defs, res, root, &input);
  detail::frame f;
  f.this_ = &input;
  return ev.eval(*program_->root, f);
}

std::optional<bool> expression::evaluate_boolean(const value& resource, const evaluate_options& options) const {
  collection c = evaluate(resource, options);
  if (c.empty()) return std::nullopt;
  if (c.size() > 1) throw evaluation_error("expected a single boolean, got " + std::to_string(c.size()) + " items");
  if (c[0].kind == item_kind::boolean) return c[0].boolean_value;
  if (c[0].kind == item_kind::node && c[0].node && c[0].node->is_boolean()) return c[0].node->as_bool();
  return true;
}

expression compile(std::string_view text) {
  auto p = std::make_shared<detail::program>();
  p->text = std::string(text);
  p->root = detail::parse(text);
  expression e;
  e.program_ = std::move(p);
  return e;
}

}  // namespace yilian::fhir::fhirpath