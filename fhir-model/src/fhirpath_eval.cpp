// FHIRPath evaluator: tree navigation with FHIR types from the definitions, operators and the
// function library.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>

#include "fhirpath_internal.hpp"

namespace yilian::fhir::fhirpath {
namespace detail {
namespace {

struct frame {
  const collection* this_ = nullptr;  // focus of leading names and $this
  std::int64_t index = -1;
  const collection* total = nullptr;
};

const collection empty_collection;

bool is_upper(char c) { return c >= 'A' && c <= 'Z'; }

class evaluator {
 public:
  evaluator(const evaluate_options& opt, const definitions& defs, const value* resource, const value* root,
            const collection* context)
      : opt_(opt), defs_(defs), resource_(resource), root_(root), context_(context) {}

  collection eval(const ast& n, const frame& f) {
    switch (n.kind) {
      case node_kind::literal: return collection{n.literal};
      case node_kind::empty: return {};
      case node_kind::this_ref: return *f.this_;
      case node_kind::index_ref:
        if (f.index < 0) return {};
        return collection{item::make_integer(f.index)};
      case node_kind::total_ref: return f.total ? *f.total : collection{};
      case node_kind::variable: return variable(n);
      case node_kind::identifier: {
        collection holder;
        if (n.input) holder = eval(*n.input, f);
        const collection& in = n.input ? holder : *f.this_;
        collection out;
        for (const item& it : in) navigate(it, n.name, out, n.position);
        if (opt_.strict && !in.empty() && out.empty() && is_upper(n.name[0]) && !n.input) {
          throw evaluation_error("type '" + n.name + "' does not match the context");
        }
        return out;
      }
      case node_kind::function: return call(n, f);
      case node_kind::indexer: {
        collection in = eval(*n.input, f);
        collection idx = eval(*n.args[0], f);
        if (idx.empty()) return {};
        item i = to_system(single(idx, "indexer"), defs_);
        if (i.kind != item_kind::integer) throw evaluation_error("indexer must be an integer");
        if (i.integer_value < 0 || i.integer_value >= static_cast<std::int64_t>(in.size())) return {};
        return collection{in[static_cast<std::size_t>(i.integer_value)]};
      }
      case node_kind::unary_plus:
      case node_kind::unary_minus: {
        collection in = eval(*n.input, f);
        if (in.empty()) return {};
        item v = to_system(single(in, "unary operator"), defs_);
        if (n.kind == node_kind::unary_plus) {
          if (v.kind != item_kind::integer && v.kind != item_kind::decimal && v.kind != item_kind::quantity)
            throw evaluation_error("unary + needs a number");
          return collection{v};
        }
        if (v.kind == item_kind::integer) v.integer_value = -v.integer_value;
        else if (v.kind == item_kind::decimal || v.kind == item_kind::quantity) v.decimal_value.mantissa = -v.decimal_value.mantissa;
        else throw evaluation_error("unary - needs a number, not " + v.type_name());
        return collection{v};
      }
      case node_kind::is_type: {
        collection in = eval(*n.input, f);
        if (in.empty()) return {};
        if (in.size() > 1) throw evaluation_error("'is' needs a single item");
        return collection{item::make_boolean(type_matches(in[0], n.type_namespace, n.type_name, false))};
      }
      case node_kind::as_type: {
        // On several items the operator filters like ofType(): R4 search parameters rely on it
        // ("Observation.component.value as Quantity"). The as() function keeps the single-item rule.
        collection in = eval(*n.input, f);
        collection out;
        for (const item& x : in)
          if (type_matches(x, n.type_namespace, n.type_name, true)) out.push_back(x);
        if (opt_.strict && in.size() == 1 && out.empty())
          throw evaluation_error("'as " + n.type_name + "' cannot match " + in[0].type_name());
        return out;
      }
      case node_kind::binary: return binary(n, f);
    }
    return {};
  }

 private:
  // ---- helpers ----

  const item& single(const collection& c, const char* what) {
    if (c.size() != 1) throw evaluation_error(std::string(what) + " needs a single item, got " + std::to_string(c.size()));
    return c[0];
  }

  // Singleton evaluation of collections as a boolean.
  std::optional<bool> truth(const collection& c, const char* what) {
    if (c.empty()) return std::nullopt;
    if (c.size() > 1) throw evaluation_error(std::string(what) + ": expected a single boolean, got " + std::to_string(c.size()) + " items");
    item storage;
    const item& v = to_system(c[0], defs_, storage);
    if (v.kind == item_kind::boolean) return v.boolean_value;
    return true;
  }

  std::optional<std::string> string_arg(const ast& a, const frame& f) {
    collection c = eval(a, f);
    if (c.empty()) return std::nullopt;
    item v = to_system(single(c, "argument"), defs_);
    if (v.kind != item_kind::string) {
      auto s = v.to_string();
      if (!s || v.kind == item_kind::node) throw evaluation_error("expected a string argument");
      return s;
    }
    return v.string_value;
  }

  std::optional<std::int64_t> integer_arg(const ast& a, const frame& f) {
    collection c = eval(a, f);
    if (c.empty()) return std::nullopt;
    item v = to_system(single(c, "argument"), defs_);
    if (v.kind != item_kind::integer) throw evaluation_error("expected an integer argument");
    return v.integer_value;
  }

  // Input string of string functions: nullopt when empty; error when not a string.
  std::optional<std::string> input_string(const collection& in, const char* fn) {
    if (in.empty()) return std::nullopt;
    item v = to_system(single(in, fn), defs_);
    if (v.kind == item_kind::string) return v.string_value;
    throw evaluation_error(std::string(fn) + "() needs a string input, not " + v.type_name());
  }

  static std::string_view intern_type(const std::string& s) { return s; }

  // Type of an element for a given member (stable storage from the definitions).
  std::string_view element_type(const element_def* el, const std::string& chosen) {
    if (!el) return {};
    if (!chosen.empty() && el->is_choice()) {
      for (const std::string& code : el->type_codes)
        if (code == chosen) return code;
    }
    if (el->type_codes.size() == 1) {
      const std::string& t = el->type_codes[0];
      if (t == "string" && el->name == "id") {
        // Resource.id is an `id` (FHIR type extension); Element.id stays string.
        auto dot = el->path.find('.');
        if (dot != std::string::npos && el->path.find('.', dot + 1) == std::string::npos) {
          if (const type_def* td = defs_.find_type(std::string_view(el->path).substr(0, dot));
              td && td->kind == type_kind::resource)
            return "id";
        }
      }
      return t;
    }
    return {};
  }

  const element_def* parent_def(const item& it) {
    if (it.element && it.element->children && !it.element->children->empty()) return it.element;
    if (!it.fhir_type.empty())
      if (const type_def* td = defs_.find_type(it.fhir_type)) return &td->root;
    return nullptr;
  }

  void push_child(const item& parent, const value* v, const value* companion, const element_def* el, std::string_view type,
                  std::string_view name, collection& out, std::ptrdiff_t index) {
    item c;
    c.kind = item_kind::node;
    c.node = v;
    c.companion = companion;
    c.element = el;
    c.fhir_type = type;
    if (v && v->is_object()) {
      if (const value* rt = v->find("resourceType"); rt && rt->is_string()) {
        if (const type_def* td = defs_.find_type(rt->text())) c.fhir_type = td->name;
        c.element = nullptr;
      }
    }
    if (opt_.track_paths) {
      c.path = parent.path;
      c.path += '.';
      c.path += name;
      if (index >= 0) c.path += "[" + std::to_string(index) + "]";
    }
    out.push_back(std::move(c));
  }

  // Adds the items of member `json_name` (value and "_json_name" companion) of object `obj`.
  void add_member(const item& parent, const value& obj, std::string_view json_name, std::string_view fp_name,
                  const element_def* el, std::string_view type, collection& out) {
    const value* v = obj.find(json_name);
    std::string under = "_" + std::string(json_name);
    const value* comp = obj.find(under);
    if (!v && !comp) return;
    if ((v && v->is_array()) || (comp && comp->is_array())) {
      std::size_t n = std::max(v && v->is_array() ? v->items().size() : 0, comp && comp->is_array() ? comp->items().size() : 0);
      for (std::size_t i = 0; i < n; ++i) {
        const value* vi = v && v->is_array() && i < v->items().size() ? &v->items()[i] : nullptr;
        const value* ci = comp && comp->is_array() && i < comp->items().size() ? &comp->items()[i] : nullptr;
        if (vi && vi->is_null()) vi = nullptr;
        if (ci && ci->is_null()) ci = nullptr;
        if (!vi && !ci) continue;
        push_child(parent, vi, ci, el, type, fp_name, out, static_cast<std::ptrdiff_t>(i));
      }
      return;
    }
    if (v && v->is_null()) v = nullptr;
    if (!v && !comp) return;
    push_child(parent, v, comp, el, type, fp_name, out, -1);
  }

  // Object whose members are the children of a node item (the companion for primitives).
  const value* member_source(const item& it) {
    if (it.node && it.node->is_object()) return it.node;
    if (it.companion && it.companion->is_object()) return it.companion;
    return nullptr;
  }

  void navigate(const item& it, const std::string& name, collection& out, std::size_t) {
    if (it.kind == item_kind::type_info) {
      if (name == "name") out.push_back(item::make_string(std::string(it.fhir_type)));
      else if (name == "namespace") out.push_back(item::make_string(it.string_value));
      return;
    }
    if (it.kind != item_kind::node) return;
    if (is_upper(name[0])) {
      // A type name: filter (Patient.name on a Patient).
      if (defs_.find_type(name) && type_matches(it, "", name, false)) out.push_back(it);
      return;
    }
    const value* obj = member_source(it);
    const element_def* pdef = parent_def(it);
    if (!obj) {
      if (opt_.strict && pdef && !defs_.find_child(*pdef, name)) throw evaluation_error("unknown element '" + name + "'");
      return;
    }
    if (pdef) {
      std::string chosen;
      const element_def* el = defs_.find_child(*pdef, name, &chosen);
      if (el && !el->is_choice()) {
        add_member(it, *obj, name, name, el, element_type(el, chosen), out);
        return;
      }
      if (el && el->is_choice()) throw evaluation_error("'" + name + "' is a choice type name; use '" + std::string(el->choice_base()) + "'");
      // Choice element: the JSON name carries the type.
      bool known = false;
      for (const member& m : obj->members()) {
        std::string_view mn = m.name;
        bool companion = !mn.empty() && mn[0] == '_';
        if (companion) {
          mn.remove_prefix(1);
          if (obj->find(mn)) continue;  // handled with the value
        }
        if (mn.size() <= name.size() || !mn.starts_with(name) || !is_upper(mn[name.size()])) continue;
        std::string ch;
        const element_def* cel = defs_.find_child(*pdef, mn, &ch);
        if (!cel || !cel->is_choice() || cel->choice_base() != name) continue;
        known = true;
        add_member(it, *obj, mn, name, cel, element_type(cel, ch), out);
      }
      if (!known && opt_.strict) {
        bool exists = false;
        for (const element_def* c : *pdef->children)
          if (c->choice_base() == name) exists = true;
        if (!exists) throw evaluation_error("unknown element '" + name + "' on " + std::string(it.fhir_type));
      }
      return;
    }
    add_member(it, *obj, name, name, nullptr, {}, out);
  }

  void children_of(const item& it, collection& out) {
    if (it.kind != item_kind::node) return;
    const value* obj = member_source(it);
    if (!obj) return;
    const element_def* pdef = parent_def(it);
    for (const member& m : obj->members()) {
      std::string_view mn = m.name;
      if (mn == "resourceType") continue;
      if (!mn.empty() && mn[0] == '_') {
        mn.remove_prefix(1);
        if (obj->find(mn)) continue;
      }
      std::string chosen;
      const element_def* el = pdef ? defs_.find_child(*pdef, mn, &chosen) : nullptr;
      std::string_view fp_name = el && el->is_choice() ? el->choice_base() : mn;
      add_member(it, *obj, mn, fp_name, el, element_type(el, chosen), out);
    }
  }

  // ---- types ----

  static bool is_system_type(std::string_view n) {
    return n == "Boolean" || n == "String" || n == "Integer" || n == "Decimal" || n == "Date" || n == "DateTime" ||
           n == "Time" || n == "Quantity";
  }

  bool type_matches(const item& it, const std::string& ns, const std::string& name, bool exact) {
    const type_def* target = ns == "System" ? nullptr : defs_.find_type(name);
    bool system = (ns.empty() || ns == "System") && is_system_type(name);
    if (!target && !system) {
      if (ns == "System" || ns == "FHIR" || ns.empty()) {
        if (ns == "System" && defs_.find_type(name)) return false;
        if (ns != "System") throw evaluation_error("unknown type '" + (ns.empty() ? name : ns + "." + name) + "'");
        return false;
      }
      return false;
    }
    if (it.kind == item_kind::node) {
      if (ns == "System" || !target) return false;
      if (it.fhir_type.empty()) return false;
      if (it.fhir_type == name) return true;
      const type_def* td = defs_.find_type(it.fhir_type);
      if (exact && td && td->kind == type_kind::primitive_type) return false;
      for (int depth = 0; td && depth < 8; ++depth) {
        if (td->name == name) return true;
        td = td->base.empty() ? nullptr : defs_.find_type(td->base);
      }
      return false;
    }
    if (ns == "FHIR" || !system) return false;
    return it.type_name() == name;
  }

  // ---- variables ----

  collection variable(const ast& n) {
    const std::string& v = n.name;
    if (auto it = opt_.variables.find(v); it != opt_.variables.end()) return it->second;
    if (v == "context") return *context_;
    if (v == "resource") return resource_ ? collection{resource_item(*resource_, defs_)} : collection{};
    if (v == "rootResource") return root_ ? collection{resource_item(*root_, defs_)} : collection{};
    if (v == "ucum") return collection{item::make_string("http://unitsofmeasure.org")};
    if (v == "sct") return collection{item::make_string("http://snomed.info/sct")};
    if (v == "loinc") return collection{item::make_string("http://loinc.org")};
    if (v.starts_with("vs-")) return collection{item::make_string("http://hl7.org/fhir/ValueSet/" + v.substr(3))};
    if (v.starts_with("ext-")) return collection{item::make_string("http://hl7.org/fhir/StructureDefinition/" + v.substr(4))};
    throw evaluation_error("unknown variable %" + v);
  }

  // ---- collections ----

  bool contains_item(const collection& c, const item& x) {
    for (const item& y : c) {
      auto e = items_equal(y, x, defs_);
      if (e && *e) return true;
    }
    return false;
  }

  collection distinct(const collection& in) {
    collection out;
    for (const item& x : in)
      if (!contains_item(out, x)) out.push_back(x);
    return out;
  }

  std::optional<bool> collections_equal(const collection& a, const collection& b) {
    if (a.empty() || b.empty()) return std::nullopt;
    if (a.size() != b.size()) return false;
    bool unknown = false;
    for (std::size_t i = 0; i < a.size(); ++i) {
      auto e = items_equal(a[i], b[i], defs_);
      if (!e) unknown = true;
      else if (!*e) return false;
    }
    if (unknown) return std::nullopt;
    return true;
  }

  bool collections_equivalent(const collection& a, const collection& b) {
    if (a.size() != b.size()) return false;
    std::vector<bool> used(b.size(), false);
    for (const item& x : a) {
      bool found = false;
      for (std::size_t j = 0; j < b.size(); ++j) {
        if (!used[j] && items_equivalent(x, b[j], defs_)) {
          used[j] = found = true;
          break;
        }
      }
      if (!found) return false;
    }
    return true;
  }

  // ---- operators ----

  static collection boolean_result(std::optional<bool> b) { return b ? collection{item::make_boolean(*b)} : collection{}; }

  collection binary(const ast& n, const frame& f) {
    const ast& l = *n.args[0];
    const ast& r = *n.args[1];
    switch (n.op) {
      case binary_op::and_: {
        auto a = truth(eval(l, f), "and");
        if (a && !*a) return boolean_result(false);
        auto b = truth(eval(r, f), "and");
        if (b && !*b) return boolean_result(false);
        if (a && b) return boolean_result(true);
        return {};
      }
      case binary_op::or_: {
        auto a = truth(eval(l, f), "or");
        if (a && *a) return boolean_result(true);
        auto b = truth(eval(r, f), "or");
        if (b && *b) return boolean_result(true);
        if (a && b) return boolean_result(false);
        return {};
      }
      case binary_op::xor_: {
        auto a = truth(eval(l, f), "xor");
        auto b = truth(eval(r, f), "xor");
        if (a && b) return boolean_result(*a != *b);
        return {};
      }
      case binary_op::implies: {
        auto a = truth(eval(l, f), "implies");
        if (a && !*a) return boolean_result(true);
        auto b = truth(eval(r, f), "implies");
        if (b && *b) return boolean_result(true);
        if (a && b) return boolean_result(false);
        return {};
      }
      default: break;
    }
    collection a = eval(l, f);
    collection b = eval(r, f);
    switch (n.op) {
      case binary_op::union_: {
        collection out = distinct(a);
        for (const item& x : b)
          if (!contains_item(out, x)) out.push_back(x);
        return out;
      }
      case binary_op::eq: return boolean_result(collections_equal(a, b));
      case binary_op::ne: {
        auto e = collections_equal(a, b);
        return e ? boolean_result(!*e) : collection{};
      }
      case binary_op::equiv:
        if (a.empty() && b.empty()) return boolean_result(true);
        return boolean_result(collections_equivalent(a, b));
      case binary_op::nequiv:
        if (a.empty() && b.empty()) return boolean_result(false);
        return boolean_result(!collections_equivalent(a, b));
      case binary_op::in:
      case binary_op::contains: {
        const collection& needle = n.op == binary_op::in ? a : b;
        const collection& hay = n.op == binary_op::in ? b : a;
        if (needle.empty()) return {};
        if (needle.size() > 1) throw evaluation_error("membership needs a single item");
        return boolean_result(contains_item(hay, needle[0]));
      }
      case binary_op::lt:
      case binary_op::gt:
      case binary_op::le:
      case binary_op::ge: {
        if (a.empty() || b.empty()) return {};
        auto c = items_compare(single(a, "comparison"), single(b, "comparison"), defs_);
        if (!c) return {};
        switch (n.op) {
          case binary_op::lt: return boolean_result(*c < 0);
          case binary_op::gt: return boolean_result(*c > 0);
          case binary_op::le: return boolean_result(*c <= 0);
          default: return boolean_result(*c >= 0);
        }
      }
      case binary_op::concat: {
        std::string s;
        if (!a.empty()) {
          item x = to_system(single(a, "&"), defs_);
          if (x.kind != item_kind::string) throw evaluation_error("& needs strings");
          s = x.string_value;
        }
        if (!b.empty()) {
          item y = to_system(single(b, "&"), defs_);
          if (y.kind != item_kind::string) throw evaluation_error("& needs strings");
          s += y.string_value;
        }
        return collection{item::make_string(std::move(s))};
      }
      default: return arithmetic(n.op, a, b);
    }
  }

  collection arithmetic(binary_op op, const collection& ca, const collection& cb) {
    if (ca.empty() || cb.empty()) return {};
    item a = to_system(single(ca, "arithmetic"), defs_);
    item b = to_system(single(cb, "arithmetic"), defs_);
    auto numeric = [](const item& x) { return x.kind == item_kind::integer || x.kind == item_kind::decimal; };
    auto as_dec = [](const item& x) { return x.kind == item_kind::integer ? decimal::from_integer(x.integer_value) : x.decimal_value; };
    if (a.kind == item_kind::string && b.kind == item_kind::string && op == binary_op::add)
      return collection{item::make_string(a.string_value + b.string_value)};
    if ((a.kind == item_kind::date || a.kind == item_kind::datetime || a.kind == item_kind::time) &&
        (op == binary_op::add || op == binary_op::sub)) {
      if (b.kind != item_kind::quantity) throw evaluation_error("date/time arithmetic needs a quantity");
      auto t = add_duration(a.temporal_value, a.kind, b.decimal_value, b.string_value, op == binary_op::sub);
      if (!t) throw evaluation_error("cannot add '" + b.string_value + "' to a date/time");
      item out;
      out.kind = a.kind;
      out.temporal_value = *t;
      return collection{out};
    }
    if (numeric(a) && numeric(b)) {
      if (a.kind == item_kind::integer && b.kind == item_kind::integer && op != binary_op::div) {
        std::int64_t x = a.integer_value, y = b.integer_value, r = 0;
        switch (op) {
          case binary_op::add:
            if (__builtin_add_overflow(x, y, &r)) throw evaluation_error("integer overflow");
            break;
          case binary_op::sub:
            if (__builtin_sub_overflow(x, y, &r)) throw evaluation_error("integer overflow");
            break;
          case binary_op::mul:
            if (__builtin_mul_overflow(x, y, &r)) throw evaluation_error("integer overflow");
            break;
          case binary_op::int_div:
            if (y == 0) return {};
            r = x / y;
            break;
          case binary_op::mod:
            if (y == 0) return {};
            r = x % y;
            break;
          default: break;
        }
        return collection{item::make_integer(r)};
      }
      decimal x = as_dec(a), y = as_dec(b);
      switch (op) {
        case binary_op::add: return collection{item::make_decimal(decimal_add(x, y, false))};
        case binary_op::sub: return collection{item::make_decimal(decimal_add(x, y, true))};
        case binary_op::mul: return collection{item::make_decimal(decimal_mul(x, y))};
        case binary_op::div: {
          auto q = decimal_div(x, y);
          if (!q) return {};
          return collection{item::make_decimal(*q)};
        }
        case binary_op::int_div: {
          if (y.mantissa == 0) return {};
          long double q = std::trunc(x.to_double() / y.to_double());
          return collection{item::make_integer(static_cast<std::int64_t>(q))};
        }
        case binary_op::mod: {
          if (y.mantissa == 0) return {};
          decimal xx = x, yy = y;
          int s = std::max(xx.scale, yy.scale);
          xx = xx.rounded(s);
          yy = yy.rounded(s);
          decimal r{xx.mantissa % yy.mantissa, s};
          return collection{item::make_decimal(r)};
        }
        default: break;
      }
    }
    if (a.kind == item_kind::quantity && b.kind == item_kind::quantity) {
      if (op == binary_op::mul || op == binary_op::div) {
        auto q = quantity_multiply(a, b, op == binary_op::div);
        if (!q) throw evaluation_error("cannot combine units '" + a.string_value + "' and '" + b.string_value + "'");
        return collection{*q};
      }
      if (op == binary_op::add || op == binary_op::sub) {
        if (a.string_value == b.string_value)
          return collection{item::make_quantity(decimal_add(a.decimal_value, b.decimal_value, op == binary_op::sub), a.string_value)};
        auto eq = units_comparable(a.string_value, b.string_value);
        if (!eq) throw evaluation_error("incompatible units");
        // Convert b into a's unit via the ratio of their canonical factors.
        item one_a = item::make_quantity(decimal{1, 0}, a.string_value);
        auto ratio = quantity_multiply(b, one_a, true);
        if (!ratio) return {};
        return collection{item::make_quantity(decimal_add(a.decimal_value, ratio->decimal_value, op == binary_op::sub), a.string_value)};
      }
    }
    if ((a.kind == item_kind::quantity && numeric(b)) || (numeric(a) && b.kind == item_kind::quantity)) {
      if (op == binary_op::mul || (op == binary_op::div && a.kind == item_kind::quantity)) {
        const item& q = a.kind == item_kind::quantity ? a : b;
        decimal k = as_dec(a.kind == item_kind::quantity ? b : a);
        if (op == binary_op::mul) return collection{item::make_quantity(decimal_mul(q.decimal_value, k), q.string_value)};
        auto d = decimal_div(q.decimal_value, k);
        if (!d) return {};
        return collection{item::make_quantity(*d, q.string_value)};
      }
    }
    throw evaluation_error("operator not defined for " + a.type_name() + " and " + b.type_name());
  }

  // ---- functions ----

  collection call(const ast& n, const frame& f);

  collection iterate_where(const collection& in, const ast& crit, bool select);

  temporal now_value() {
    if (opt_.now) return *opt_.now;
    auto tp = std::chrono::system_clock::now();
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(tp.time_since_epoch()).count();
    std::time_t secs = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    temporal t;
    t.year = tm.tm_year + 1900;
    t.month = tm.tm_mon + 1;
    t.day = tm.tm_mday;
    t.hour = tm.tm_hour;
    t.minute = tm.tm_min;
    t.second = tm.tm_sec;
    t.millisecond = static_cast<int>(ms % 1000);
    t.prec = precision::millisecond;
    t.has_tz = true;
    t.tz_minutes = 0;
    return t;
  }

  collection convert(fn id, const collection& in);
  collection math(fn id, const collection& in, const ast& n, const frame& f);
  collection strings(fn id, const collection& in, const ast& n, const frame& f);
  collection boundary(const collection& in, const ast& n, const frame& f, bool high);
  collection resolve(const collection& in);
  item reference_stub(const item& from, const std::string& ref);

  const evaluate_options& opt_;
  const definitions& defs_;
  const value* resource_;
  const value* root_;
  const collection* context_;
};

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

std::optional<bool> to_boolean_value(const item& v) {
  switch (v.kind) {
    case item_kind::boolean: return v.boolean_value;
    case item_kind::integer:
      if (v.integer_value == 1) return true;
      if (v.integer_value == 0) return false;
      return std::nullopt;
    case item_kind::decimal:
      if (compare(v.decimal_value, decimal{1, 0}) == 0) return true;
      if (compare(v.decimal_value, decimal{0, 0}) == 0) return false;
      return std::nullopt;
    case item_kind::string: {
      std::string s;
      for (char c : v.string_value) s += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (s == "true" || s == "t" || s == "yes" || s == "y" || s == "1" || s == "1.0") return true;
      if (s == "false" || s == "f" || s == "no" || s == "n" || s == "0" || s == "0.0") return false;
      return std::nullopt;
    }
    default: return std::nullopt;
  }
}

collection evaluator::convert(fn id, const collection& in) {
  if (in.empty()) return {};
  item v = to_system(single(in, "conversion"), defs_);
  auto out_or_empty = [](std::optional<item> r) { return r ? collection{*r} : collection{}; };
  std::optional<item> r;
  switch (id) {
    case fn::f_toBoolean:
    case fn::f_convertsToBoolean:
      if (auto b = to_boolean_value(v)) r = item::make_boolean(*b);
      break;
    case fn::f_toInteger:
    case fn::f_convertsToInteger:
      if (v.kind == item_kind::integer) r = v;
      else if (v.kind == item_kind::boolean) r = item::make_integer(v.boolean_value ? 1 : 0);
      else if (v.kind == item_kind::string) {
        const std::string& s = v.string_value;
        std::size_t i = (!s.empty() && (s[0] == '+' || s[0] == '-')) ? 1 : 0;
        bool ok = i < s.size() && s.size() - i <= 18;
        for (std::size_t k = i; ok && k < s.size(); ++k) ok = std::isdigit(static_cast<unsigned char>(s[k])) != 0;
        if (ok) r = item::make_integer(std::stoll(s));
      }
      break;
    case fn::f_toDecimal:
    case fn::f_convertsToDecimal:
      if (v.kind == item_kind::decimal) r = v;
      else if (v.kind == item_kind::integer) r = item::make_decimal(decimal::from_integer(v.integer_value));
      else if (v.kind == item_kind::boolean) r = item::make_decimal(decimal{v.boolean_value ? 10 : 0, 1});
      else if (v.kind == item_kind::string && v.string_value.find_first_of("eE") == std::string::npos) {
        if (auto d = decimal::parse(v.string_value)) r = item::make_decimal(*d);
      }
      break;
    case fn::f_toString:
    case fn::f_convertsToString:
      if (auto s = v.to_string(); s && v.kind != item_kind::node) r = item::make_string(*s);
      break;
    case fn::f_toDate:
    case fn::f_convertsToDate:
      if (v.kind == item_kind::date) r = v;
      else if (v.kind == item_kind::datetime) {
        item d = v;
        d.kind = item_kind::date;
        if (d.temporal_value.prec > precision::day) d.temporal_value.prec = precision::day;
        d.temporal_value.hour = d.temporal_value.minute = d.temporal_value.second = d.temporal_value.millisecond = 0;
        d.temporal_value.has_tz = false;
        r = d;
      } else if (v.kind == item_kind::string) {
        if (auto t = parse_temporal(v.string_value, item_kind::date)) {
          item d;
          d.kind = item_kind::date;
          d.temporal_value = *t;
          r = d;
        }
      }
      break;
    case fn::f_toDateTime:
    case fn::f_convertsToDateTime:
      if (v.kind == item_kind::datetime) r = v;
      else if (v.kind == item_kind::date) {
        item d = v;
        d.kind = item_kind::datetime;
        r = d;
      } else if (v.kind == item_kind::string) {
        if (auto t = parse_temporal(v.string_value, item_kind::datetime)) {
          item d;
          d.kind = item_kind::datetime;
          d.temporal_value = *t;
          r = d;
        }
      }
      break;
    case fn::f_toTime:
    case fn::f_convertsToTime:
      if (v.kind == item_kind::time) r = v;
      else if (v.kind == item_kind::string) {
        std::string_view s = v.string_value;
        if (!s.empty() && s[0] == 'T') s.remove_prefix(1);
        if (auto t = parse_temporal(s, item_kind::time)) {
          item d;
          d.kind = item_kind::time;
          d.temporal_value = *t;
          r = d;
        }
      }
      break;
    case fn::f_toQuantity:
    case fn::f_convertsToQuantity:
      if (v.kind == item_kind::quantity) r = v;
      else if (v.kind == item_kind::integer) r = item::make_quantity(decimal::from_integer(v.integer_value), "1");
      else if (v.kind == item_kind::decimal) r = item::make_quantity(v.decimal_value, "1");
      else if (v.kind == item_kind::boolean) r = item::make_quantity(decimal{v.boolean_value ? 10 : 0, 1}, "1");
      else if (v.kind == item_kind::string) r = parse_quantity_text(v.string_value);
      break;
    default: break;
  }
  bool converts = id == fn::f_convertsToBoolean || id == fn::f_convertsToInteger || id == fn::f_convertsToDecimal ||
                  id == fn::f_convertsToString || id == fn::f_convertsToDate || id == fn::f_convertsToDateTime ||
                  id == fn::f_convertsToTime || id == fn::f_convertsToQuantity;
  if (converts) return collection{item::make_boolean(r.has_value())};
  return out_or_empty(r);
}

collection evaluator::math(fn id, const collection& in, const ast& n, const frame& f) {
  if (in.empty()) return {};
  item v = to_system(single(in, "math"), defs_);
  bool is_int = v.kind == item_kind::integer;
  if (v.kind == item_kind::quantity && id == fn::f_abs) {
    v.decimal_value.mantissa = v.decimal_value.mantissa < 0 ? -v.decimal_value.mantissa : v.decimal_value.mantissa;
    return collection{v};
  }
  if (!is_int && v.kind != item_kind::decimal) throw evaluation_error("math function needs a number, not " + v.type_name());
  decimal d = is_int ? decimal::from_integer(v.integer_value) : v.decimal_value;
  long double x = d.to_double();
  auto dec = [](long double r) -> collection {
    if (std::isnan(r) || std::isinf(r)) return {};
    return collection{item::make_decimal(decimal::from_double(r))};
  };
  switch (id) {
    case fn::f_abs:
      if (is_int) return collection{item::make_integer(v.integer_value < 0 ? -v.integer_value : v.integer_value)};
      d.mantissa = d.mantissa < 0 ? -d.mantissa : d.mantissa;
      return collection{item::make_decimal(d)};
    case fn::f_ceiling: {
      decimal r = d.rounded(0);
      if (compare(r, d) < 0) r.mantissa += 1;
      return collection{item::make_integer(static_cast<std::int64_t>(r.mantissa))};
    }
    case fn::f_floor: {
      decimal r = d.rounded(0);
      if (compare(r, d) > 0) r.mantissa -= 1;
      return collection{item::make_integer(static_cast<std::int64_t>(r.mantissa))};
    }
    case fn::f_truncate: return collection{item::make_integer(static_cast<std::int64_t>(std::trunc(x)))};
    case fn::f_exp: return dec(std::exp(x));
    case fn::f_ln: return x <= 0 ? collection{} : dec(std::log(x));
    case fn::f_sqrt: return x < 0 ? collection{} : dec(std::sqrt(x));
    case fn::f_log: {
      collection b = eval(*n.args[0], f);
      if (b.empty()) return {};
      item bv = to_system(single(b, "log"), defs_);
      long double base = bv.kind == item_kind::integer ? static_cast<long double>(bv.integer_value) : bv.decimal_value.to_double();
      if (x <= 0 || base <= 0 || base == 1) return {};
      return dec(std::log(x) / std::log(base));
    }
    case fn::f_power: {
      collection b = eval(*n.args[0], f);
      if (b.empty()) return {};
      item bv = to_system(single(b, "power"), defs_);
      if (is_int && bv.kind == item_kind::integer && bv.integer_value >= 0) {
        std::int64_t r = 1;
        for (std::int64_t k = 0; k < bv.integer_value; ++k)
          if (__builtin_mul_overflow(r, v.integer_value, &r)) return {};
        return collection{item::make_integer(r)};
      }
      long double e = bv.kind == item_kind::integer ? static_cast<long double>(bv.integer_value) : bv.decimal_value.to_double();
      return dec(std::pow(x, e));
    }
    case fn::f_round: {
      std::int64_t p = 0;
      if (!n.args.empty()) {
        auto a = integer_arg(*n.args[0], f);
        if (!a) return {};
        p = *a;
        if (p < 0) throw evaluation_error("round() precision must be >= 0");
      }
      return collection{item::make_decimal(d.rounded(static_cast<int>(p)))};
    }
    default: return {};
  }
}

}  // namespace

std::string regex_dotall(const std::string& p) {
  std::string out;
  bool in_class = false;
  for (std::size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      out += c;
      out += p[++i];
      continue;
    }
    if (c == '[') in_class = true;
    else if (c == ']') in_class = false;
    if (c == '.' && !in_class) out += "[\\s\\S]";
    else out += c;
  }
  return out;
}

namespace {

std::size_t utf8_length(std::string_view s) {
  std::size_t n = 0;
  for (char c : s)
    if ((static_cast<unsigned char>(c) & 0xC0) != 0x80) ++n;
  return n;
}

const char* const b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64_encode(std::string_view in, bool url) {
  std::string out;
  std::size_t i = 0;
  while (i + 2 < in.size() + 2 && i < in.size()) {
    unsigned v = static_cast<unsigned char>(in[i]) << 16;
    if (i + 1 < in.size()) v |= static_cast<unsigned char>(in[i + 1]) << 8;
    if (i + 2 < in.size()) v |= static_cast<unsigned char>(in[i + 2]);
    out += b64[(v >> 18) & 63];
    out += b64[(v >> 12) & 63];
    out += i + 1 < in.size() ? b64[(v >> 6) & 63] : '=';
    out += i + 2 < in.size() ? b64[v & 63] : '=';
    i += 3;
  }
  if (url)
    for (char& c : out) c = c == '+' ? '-' : c == '/' ? '_' : c;
  return out;
}

std::optional<std::string> base64_decode(std::string_view in) {
  std::string out;
  unsigned v = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=') break;
    int d;
    if (c == '-') d = 62;
    else if (c == '_') d = 63;
    else {
      const char* p = std::strchr(b64, c);
      if (!p || !c) return std::nullopt;
      d = static_cast<int>(p - b64);
    }
    v = (v << 6) | static_cast<unsigned>(d);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((v >> bits) & 0xFF);
    }
  }
  return out;
}

collection evaluator::strings(fn id, const collection& in, const ast& n, const frame& f) {
  const char* name = function_at(static_cast<int>(id)).name;
  auto s = input_string(in, name);
  if (!s) return {};
  auto str = [](std::string v) { return collection{item::make_string(std::move(v))}; };
  switch (id) {
    case fn::f_indexOf: {
      auto a = string_arg(*n.args[0], f);
      if (!a) return {};
      auto p = s->find(*a);
      return collection{item::make_integer(p == std::string::npos ? -1 : static_cast<std::int64_t>(p))};
    }
    case fn::f_substring: {
      auto start = integer_arg(*n.args[0], f);
      if (!start || *start < 0 || *start >= static_cast<std::int64_t>(s->size())) return {};
      std::size_t len = std::string::npos;
      if (n.args.size() > 1) {
        auto l = integer_arg(*n.args[1], f);
        if (l) len = *l < 0 ? 0 : static_cast<std::size_t>(*l);
      }
      return str(s->substr(static_cast<std::size_t>(*start), len));
    }
    case fn::f_startsWith:
    case fn::f_endsWith:
    case fn::f_contains: {
      auto a = string_arg(*n.args[0], f);
      if (!a) return {};
      bool r = id == fn::f_startsWith ? s->starts_with(*a) : id == fn::f_endsWith ? s->ends_with(*a) : s->find(*a) != std::string::npos;
      return collection{item::make_boolean(r)};
    }
    case fn::f_upper:
    case fn::f_lower: {
      std::string r = *s;
      for (char& c : r) c = static_cast<char>(id == fn::f_upper ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
      return str(std::move(r));
    }
    case fn::f_replace: {
      auto pat = string_arg(*n.args[0], f);
      auto rep = string_arg(*n.args[1], f);
      if (!pat || !rep) return {};
      std::string out;
      if (pat->empty()) {
        out = *rep;
        for (char c : *s) {
          out += c;
          out += *rep;
        }
        return str(std::move(out));
      }
      std::size_t pos = 0;
      for (;;) {
        std::size_t hit = s->find(*pat, pos);
        if (hit == std::string::npos) break;
        out.append(*s, pos, hit - pos);
        out += *rep;
        pos = hit + pat->size();
      }
      out.append(*s, pos);
      return str(std::move(out));
    }
    case fn::f_matches:
    case fn::f_matchesFull:
    case fn::f_replaceMatches: {
      std::shared_ptr<const std::regex> re = n.regex;
      auto pat = string_arg(*n.args[0], f);
      if (!pat) return {};
      std::optional<std::string> rep;
      if (id == fn::f_replaceMatches) {
        rep = string_arg(*n.args[1], f);
        if (!rep) return {};
        if (pat->empty()) return str(*s);
      }
      try {
        std::optional<std::regex> local;
        if (!re) {
          std::string p = regex_dotall(*pat);
          if (id == fn::f_matchesFull) p = "^(?:" + p + ")$";
          local.emplace(p, std::regex::ECMAScript);
        }
        const std::regex& rx = re ? *re : *local;
        if (id == fn::f_replaceMatches) return str(std::regex_replace(*s, rx, *rep));
        return collection{item::make_boolean(std::regex_search(*s, rx))};
      } catch (const std::regex_error& e) {
        throw evaluation_error(std::string("invalid regular expression: ") + e.what());
      }
    }
    case fn::f_length: return collection{item::make_integer(static_cast<std::int64_t>(utf8_length(*s)))};
    case fn::f_toChars: {
      collection out;
      for (std::size_t i = 0; i < s->size();) {
        std::size_t j = i + 1;
        while (j < s->size() && (static_cast<unsigned char>((*s)[j]) & 0xC0) == 0x80) ++j;
        out.push_back(item::make_string(s->substr(i, j - i)));
        i = j;
      }
      return out;
    }
    case fn::f_trim: {
      std::size_t b = s->find_first_not_of(" \t\r\n");
      if (b == std::string::npos) return str("");
      std::size_t e = s->find_last_not_of(" \t\r\n");
      return str(s->substr(b, e - b + 1));
    }
    case fn::f_split: {
      auto sep = string_arg(*n.args[0], f);
      if (!sep) return {};
      collection out;
      if (sep->empty()) return str(*s);
      std::size_t pos = 0;
      for (;;) {
        std::size_t hit = s->find(*sep, pos);
        if (hit == std::string::npos) {
          out.push_back(item::make_string(s->substr(pos)));
          break;
        }
        out.push_back(item::make_string(s->substr(pos, hit - pos)));
        pos = hit + sep->size();
      }
      return out;
    }
    case fn::f_encode:
    case fn::f_decode: {
      auto enc = string_arg(*n.args[0], f);
      if (!enc) return {};
      if (*enc == "base64" || *enc == "urlbase64") {
        if (id == fn::f_encode) return str(base64_encode(*s, *enc == "urlbase64"));
        auto d = base64_decode(*s);
        return d ? str(*d) : collection{};
      }
      if (*enc == "hex") {
        static const char* hex = "0123456789abcdef";
        std::string out;
        if (id == fn::f_encode) {
          for (unsigned char c : *s) {
            out += hex[c >> 4];
            out += hex[c & 15];
          }
          return str(out);
        }
        if (s->size() % 2) return {};
        for (std::size_t i = 0; i < s->size(); i += 2) out += static_cast<char>(std::stoi(s->substr(i, 2), nullptr, 16));
        return str(out);
      }
      throw evaluation_error("unknown encoding '" + *enc + "'");
    }
    case fn::f_escape:
    case fn::f_unescape: {
      auto kind = string_arg(*n.args[0], f);
      if (!kind) return {};
      std::string out;
      if (*kind == "html") {
        if (id == fn::f_escape) {
          for (char c : *s) {
            if (c == '&') out += "&amp;";
            else if (c == '<') out += "&lt;";
            else if (c == '>') out += "&gt;";
            else if (c == '"') out += "&quot;";
            else if (c == '\'') out += "&#39;";
            else out += c;
          }
        } else {
          static const std::pair<const char*, char> ents[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&#39;", '\''}, {"&apos;", '\''}};
          for (std::size_t i = 0; i < s->size();) {
            bool hit = false;
            for (auto& [e, c] : ents) {
              if (s->compare(i, std::strlen(e), e) == 0) {
                out += c;
                i += std::strlen(e);
                hit = true;
                break;
              }
            }
            if (!hit) out += (*s)[i++];
          }
        }
        return str(out);
      }
      if (*kind == "json") {
        if (id == fn::f_escape) {
          for (char c : *s) {
            if (c == '"') out += "\\\"";
            else if (c == '\\') out += "\\\\";
            else if (c == '\n') out += "\\n";
            else if (c == '\t') out += "\\t";
            else if (c == '\r') out += "\\r";
            else out += c;
          }
        } else {
          for (std::size_t i = 0; i < s->size(); ++i) {
            char c = (*s)[i];
            if (c == '\\' && i + 1 < s->size()) {
              char e = (*s)[++i];
              out += e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
            } else {
              out += c;
            }
          }
        }
        return str(out);
      }
      throw evaluation_error("unknown escape kind '" + *kind + "'");
    }
    default: return {};
  }
}

int digits_of(precision p, item_kind k) {
  if (k == item_kind::time) {
    switch (p) {
      case precision::hour: return 2;
      case precision::minute: return 4;
      case precision::second: return 6;
      default: return 9;
    }
  }
  switch (p) {
    case precision::year: return 4;
    case precision::month: return 6;
    case precision::day: return 8;
    case precision::hour: return 10;
    case precision::minute: return 12;
    case precision::second: return 14;
    default: return 17;
  }
}

collection evaluator::boundary(const collection& in, const ast& n, const frame& f, bool high) {
  if (in.empty()) return {};
  item v = to_system(single(in, high ? "highBoundary" : "lowBoundary"), defs_);
  std::optional<std::int64_t> p;
  if (!n.args.empty()) {
    p = integer_arg(*n.args[0], f);
    if (!p) return {};
  }
  if (v.kind == item_kind::integer || v.kind == item_kind::decimal || v.kind == item_kind::quantity) {
    decimal d = v.kind == item_kind::integer ? decimal::from_integer(v.integer_value) : v.decimal_value;
    std::int64_t prec = p ? *p : 8;
    if (prec < 0 || prec > 28) return {};
    // Half a unit of the last digit, one digit further.
    decimal half{d.mantissa < 0 ? -5 : 5, d.scale + 1};
    (void)half;
    decimal edge = decimal_add(d.rounded(d.scale + 1), decimal{5, d.scale + 1}, !high);
    int target = static_cast<int>(prec);
    decimal r;
    if (target >= edge.scale) {
      r = edge.rounded(target);
    } else {
      // Floor (low) or ceiling (high) at the target precision.
      decimal t = edge.rounded(target);
      int c = compare(t, edge);
      if (!high && c > 0) t.mantissa -= 1;
      if (high && c < 0) t.mantissa += 1;
      r = t;
    }
    if (v.kind == item_kind::quantity) return collection{item::make_quantity(r, v.string_value)};
    return collection{item::make_decimal(r)};
  }
  if (v.kind == item_kind::date || v.kind == item_kind::datetime || v.kind == item_kind::time) {
    temporal t = v.temporal_value;
    std::int64_t digits = p ? *p : (v.kind == item_kind::time ? 9 : 17);
    precision target;
    item_kind kind = v.kind;
    if (v.kind == item_kind::time) {
      if (digits == 2) target = precision::hour;
      else if (digits == 4) target = precision::minute;
      else if (digits == 6) target = precision::second;
      else if (digits == 9) target = precision::millisecond;
      else return {};
    } else {
      if (digits == 4) target = precision::year;
      else if (digits == 6) target = precision::month;
      else if (digits == 8) target = precision::day;
      else if (digits == 10) target = precision::hour;
      else if (digits == 12) target = precision::minute;
      else if (digits == 14) target = precision::second;
      else if (digits == 17) target = precision::millisecond;
      else return {};
      if (v.kind == item_kind::date && target > precision::day) kind = item_kind::datetime;
    }
    auto dim = [](int y, int m) {
      static const int d[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
      bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
      return m == 2 && leap ? 29 : d[m - 1];
    };
    if (t.prec < precision::month) t.month = high ? 12 : 1;
    if (t.prec < precision::day) t.day = high ? dim(t.year, t.month ? t.month : 1) : 1;
    if (t.prec < precision::hour) t.hour = high ? 23 : 0;
    if (t.prec < precision::minute) t.minute = high ? 59 : 0;
    if (t.prec < precision::second) t.second = high ? 59 : 0;
    if (t.prec < precision::millisecond) t.millisecond = high ? 999 : 0;
    if (kind == item_kind::datetime && target >= precision::hour && !t.has_tz) {
      t.has_tz = true;
      t.tz_minutes = high ? -12 * 60 : 14 * 60;
    }
    t.prec = target;
    if (target < precision::hour) {
      t.hour = t.minute = t.second = t.millisecond = 0;
      t.has_tz = false;
      if (kind == item_kind::datetime && v.kind == item_kind::datetime) kind = item_kind::date;
    }
    if (target < precision::day) t.day = 0;
    if (target < precision::month) t.month = 0;
    item out;
    out.kind = kind;
    out.temporal_value = t;
    return collection{out};
  }
  throw evaluation_error("boundary functions need a number, quantity or date/time");
}

// A resource that is not at hand: an item with the type the reference names ("Patient/1",
// "http://x/fhir/Patient/1/_history/2") and no content, so `resolve() is Patient` works without a
// store. Nothing is returned when the reference does not name a type.
item evaluator::reference_stub(const item&, const std::string& ref) {
  std::string_view r = ref;
  if (auto q = r.find_first_of("?#"); q != std::string_view::npos) r = r.substr(0, q);
  if (auto h = r.find("/_history/"); h != std::string_view::npos) r = r.substr(0, h);
  std::vector<std::string_view> parts;
  std::size_t b = 0;
  while (b <= r.size()) {
    std::size_t e = r.find('/', b);
    if (e == std::string_view::npos) e = r.size();
    parts.push_back(r.substr(b, e - b));
    b = e + 1;
  }
  item stub;
  stub.kind = item_kind::node;
  stub.string_value = ref;
  for (std::size_t i = parts.size(); i-- > 0;) {
    if (const type_def* td = defs_.find_type(parts[i]); td && td->kind == type_kind::resource && i + 2 >= parts.size()) {
      stub.fhir_type = td->name;
      break;
    }
  }
  return stub;
}

collection evaluator::resolve(const collection& in) {
  collection out;
  for (const item& it : in) {
    std::string ref;
    if (it.kind == item_kind::string) ref = it.string_value;
    else if (it.kind == item_kind::node && it.node && it.node->is_string()) ref = it.node->text();
    else if (it.kind == item_kind::node && it.node && it.node->is_object()) {
      const value* r = it.node->find("reference");
      if (r && r->is_string()) ref = r->text();
    }
    if (ref.empty()) {
      // A Reference with only a type (and an identifier) still says what it points at.
      if (it.kind == item_kind::node && it.node && it.node->is_object())
        if (const value* t = it.node->find("type"); t && t->is_string() && defs_.is_resource_type(t->text()))
          out.push_back(reference_stub(it, t->text() + "/"));
      continue;
    }
    bool found = false;
    if (ref[0] == '#') {
      const value* host = resource_;
      if (const value* c = host ? host->find("contained") : nullptr; c && c->is_array()) {
        for (const value& res : c->items()) {
          const value* id = res.find("id");
          if (id && id->text() == ref.substr(1)) out.push_back(resource_item(res, defs_));
        }
      }
      continue;
    }
    const value* bundle = root_;
    const value* rt = bundle ? bundle->find("resourceType") : nullptr;
    const value* entries = rt && rt->text() == "Bundle" ? bundle->find("entry") : nullptr;
    if (!entries || !entries->is_array()) {
      out.push_back(reference_stub(it, ref));
      continue;
    }
    for (const value& e : entries->items()) {
      const value* res = e.find("resource");
      if (!res) continue;
      const value* full = e.find("fullUrl");
      bool match = full && full->text() == ref;
      if (!match) {
        const value* t = res->find("resourceType");
        const value* id = res->find("id");
        if (t && id) {
          std::string local = t->text() + "/" + id->text();
          match = ref == local || ref.ends_with("/" + local) ||
                  (ref.find("/_history/") != std::string::npos && ref.starts_with(local + "/_history/"));
        }
      }
      if (match) {
        out.push_back(resource_item(*res, defs_));
        found = true;
        break;
      }
    }
    if (!found) out.push_back(reference_stub(it, ref));
  }
  return out;
}

collection evaluator::call(const ast& n, const frame& f) {
  fn id = static_cast<fn>(n.function);
  // iif evaluates its arguments against its own input when it has one.
  if (id == fn::f_iif) {
    collection input_holder;
    frame g = f;
    if (n.input) {
      input_holder = eval(*n.input, f);
      if (input_holder.size() > 1) throw evaluation_error("iif() needs at most one input item");
      g.this_ = &input_holder;
    }
    collection c = eval(*n.args[0], g);
    if (opt_.strict && c.size() == 1 && to_system(c[0], defs_).kind != item_kind::boolean)
      throw evaluation_error("iif() criterion is not a boolean");
    auto t = truth(c, "iif");
    if (t && *t) return eval(*n.args[1], g);
    if (n.args.size() > 2) return eval(*n.args[2], g);
    return {};
  }
  if (opt_.check_ordered_functions && n.input && n.input->kind == node_kind::function &&
      (id == fn::f_first || id == fn::f_last || id == fn::f_tail || id == fn::f_skip || id == fn::f_take)) {
    fn inner = static_cast<fn>(n.input->function);
    if (inner == fn::f_children || inner == fn::f_descendants)
      throw evaluation_error(std::string(function_at(n.function).name) + "() on the unordered result of " +
                             function_at(n.input->function).name + "()");
  }
  collection holder;
  if (n.input) holder = eval(*n.input, f);
  const collection& in = n.input ? holder : *f.this_;
  switch (id) {
    case fn::f_empty: return collection{item::make_boolean(in.empty())};
    case fn::f_exists:
      if (n.args.empty()) return collection{item::make_boolean(!in.empty())};
      return collection{item::make_boolean(!iterate_where(in, *n.args[0], false).empty())};
    case fn::f_all: return collection{item::make_boolean(iterate_where(in, *n.args[0], false).size() == in.size())};
    case fn::f_allTrue:
    case fn::f_anyTrue:
    case fn::f_allFalse:
    case fn::f_anyFalse: {
      bool want = id == fn::f_allTrue || id == fn::f_anyTrue;
      bool all = id == fn::f_allTrue || id == fn::f_allFalse;
      bool result = all;
      for (const item& x : in) {
        item v = to_system(x, defs_);
        if (v.kind != item_kind::boolean) throw evaluation_error("expected booleans");
        if (all && v.boolean_value != want) result = false;
        if (!all && v.boolean_value == want) result = true;
      }
      return collection{item::make_boolean(result)};
    }
    case fn::f_subsetOf:
    case fn::f_supersetOf: {
      collection other = eval(*n.args[0], f);
      const collection& sub = id == fn::f_subsetOf ? in : other;
      const collection& super = id == fn::f_subsetOf ? other : in;
      for (const item& x : sub)
        if (!contains_item(super, x)) return collection{item::make_boolean(false)};
      return collection{item::make_boolean(true)};
    }
    case fn::f_count: return collection{item::make_integer(static_cast<std::int64_t>(in.size()))};
    case fn::f_distinct: return distinct(in);
    case fn::f_isDistinct: return collection{item::make_boolean(distinct(in).size() == in.size())};
    case fn::f_where: return iterate_where(in, *n.args[0], false);
    case fn::f_select: return iterate_where(in, *n.args[0], true);
    case fn::f_repeat: {
      collection out;
      collection current = in;
      for (int round = 0; !current.empty() && round < 1000; ++round) {
        collection next = iterate_where(current, *n.args[0], true);
        current.clear();
        for (item& x : next) {
          bool seen = false;
          for (const item& y : out) {
            if (x.kind == item_kind::node && y.kind == item_kind::node) {
              if (x.node == y.node && x.companion == y.companion) seen = true;
            } else {
              auto e = items_equal(x, y, defs_);
              seen = e && *e;
            }
            if (seen) break;
          }
          if (!seen) {
            out.push_back(x);
            current.push_back(std::move(x));
          }
        }
      }
      return out;
    }
    case fn::f_ofType: {
      collection out;
      for (const item& x : in)
        if (type_matches(x, n.type_namespace, n.type_name, true)) out.push_back(x);
      return out;
    }
    case fn::f_is:
      if (in.empty()) return {};
      if (in.size() > 1) throw evaluation_error("is() needs a single item");
      return collection{item::make_boolean(type_matches(in[0], n.type_namespace, n.type_name, false))};
    case fn::f_as:
      if (in.empty()) return {};
      if (in.size() > 1) throw evaluation_error("as() needs a single item");
      if (type_matches(in[0], n.type_namespace, n.type_name, true)) return in;
      return {};
    case fn::f_single:
      if (in.size() > 1) throw evaluation_error("single() on " + std::to_string(in.size()) + " items");
      return in;
    case fn::f_first: return in.empty() ? collection{} : collection{in.front()};
    case fn::f_last: return in.empty() ? collection{} : collection{in.back()};
    case fn::f_tail: return in.size() <= 1 ? collection{} : collection(in.begin() + 1, in.end());
    case fn::f_skip:
    case fn::f_take: {
      auto k = integer_arg(*n.args[0], f);
      if (!k) return id == fn::f_skip ? in : collection{};
      std::size_t num = *k < 0 ? 0 : static_cast<std::size_t>(*k);
      num = std::min(num, in.size());
      if (id == fn::f_skip) return collection(in.begin() + static_cast<std::ptrdiff_t>(num), in.end());
      return collection(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(num));
    }
    case fn::f_intersect: {
      collection other = eval(*n.args[0], f);
      collection out;
      for (const item& x : in)
        if (contains_item(other, x) && !contains_item(out, x)) out.push_back(x);
      return out;
    }
    case fn::f_exclude: {
      collection other = eval(*n.args[0], f);
      collection out;
      for (const item& x : in)
        if (!contains_item(other, x)) out.push_back(x);
      return out;
    }
    case fn::f_union: {
      collection other = eval(*n.args[0], f);
      collection out = distinct(in);
      for (const item& x : other)
        if (!contains_item(out, x)) out.push_back(x);
      return out;
    }
    case fn::f_combine: {
      collection other = eval(*n.args[0], f);
      collection out = in;
      out.insert(out.end(), other.begin(), other.end());
      return out;
    }
    case fn::f_toBoolean:
    case fn::f_convertsToBoolean:
    case fn::f_toInteger:
    case fn::f_convertsToInteger:
    case fn::f_toDecimal:
    case fn::f_convertsToDecimal:
    case fn::f_toString:
    case fn::f_convertsToString:
    case fn::f_toDate:
    case fn::f_convertsToDate:
    case fn::f_toDateTime:
    case fn::f_convertsToDateTime:
    case fn::f_toTime:
    case fn::f_convertsToTime:
    case fn::f_convertsToQuantity:
      return convert(id, in);
    case fn::f_toQuantity: {
      collection q = convert(id, in);
      if (q.empty() || n.args.empty()) return q;
      auto unit = string_arg(*n.args[0], f);
      if (!unit) return q;
      if (q[0].string_value == *unit) return q;
      if (!units_comparable(q[0].string_value, *unit)) return {};
      item one = item::make_quantity(decimal{1, 0}, *unit);
      auto ratio = quantity_multiply(q[0], one, true);
      if (!ratio) return {};
      return collection{item::make_quantity(ratio->decimal_value, *unit)};
    }
    case fn::f_indexOf:
    case fn::f_substring:
    case fn::f_startsWith:
    case fn::f_endsWith:
    case fn::f_contains:
    case fn::f_upper:
    case fn::f_lower:
    case fn::f_replace:
    case fn::f_matches:
    case fn::f_matchesFull:
    case fn::f_replaceMatches:
    case fn::f_length:
    case fn::f_toChars:
    case fn::f_trim:
    case fn::f_split:
    case fn::f_encode:
    case fn::f_decode:
    case fn::f_escape:
    case fn::f_unescape:
      return strings(id, in, n, f);
    case fn::f_join: {
      std::string sep;
      if (!n.args.empty()) {
        auto s = string_arg(*n.args[0], f);
        if (s) sep = *s;
      }
      std::string out;
      for (std::size_t i = 0; i < in.size(); ++i) {
        item v = to_system(in[i], defs_);
        if (v.kind != item_kind::string) throw evaluation_error("join() needs strings");
        if (i) out += sep;
        out += v.string_value;
      }
      return collection{item::make_string(out)};
    }
    case fn::f_abs:
    case fn::f_ceiling:
    case fn::f_exp:
    case fn::f_floor:
    case fn::f_ln:
    case fn::f_log:
    case fn::f_power:
    case fn::f_round:
    case fn::f_sqrt:
    case fn::f_truncate:
      return math(id, in, n, f);
    case fn::f_children: {
      collection out;
      for (const item& x : in) children_of(x, out);
      return out;
    }
    case fn::f_descendants: {
      collection out;
      collection current = in;
      while (!current.empty()) {
        collection next;
        for (const item& x : current) children_of(x, next);
        out.insert(out.end(), next.begin(), next.end());
        current = std::move(next);
      }
      return out;
    }
    case fn::f_trace: {
      if (opt_.trace) {
        auto name = string_arg(*n.args[0], f);
        if (n.args.size() > 1) opt_.trace(name.value_or(""), iterate_where(in, *n.args[1], true));
        else opt_.trace(name.value_or(""), in);
      }
      return in;
    }
    case fn::f_now: {
      item t;
      t.kind = item_kind::datetime;
      t.temporal_value = now_value();
      return collection{t};
    }
    case fn::f_today: {
      item t;
      t.kind = item_kind::date;
      temporal v = now_value();
      v.prec = precision::day;
      v.hour = v.minute = v.second = v.millisecond = 0;
      v.has_tz = false;
      t.temporal_value = v;
      return collection{t};
    }
    case fn::f_timeOfDay: {
      item t;
      t.kind = item_kind::time;
      temporal v = now_value();
      v.year = v.month = v.day = 0;
      v.has_tz = false;
      t.temporal_value = v;
      return collection{t};
    }
    case fn::f_not: {
      auto t = truth(in, "not");
      if (!t) return {};
      return collection{item::make_boolean(!*t)};
    }
    case fn::f_type: {
      collection out;
      for (const item& x : in) {
        item t;
        t.kind = item_kind::type_info;
        if (x.kind == item_kind::node) {
          t.string_value = "FHIR";
          t.fhir_type = x.fhir_type;
        } else {
          t.string_value = "System";
          static const char* const names[] = {"", "Boolean", "String", "Integer", "Decimal", "Date", "DateTime", "Time", "Quantity", "TypeInfo"};
          t.fhir_type = names[static_cast<int>(x.kind)];
        }
        out.push_back(std::move(t));
      }
      return out;
    }
    case fn::f_aggregate: {
      collection total;
      if (n.args.size() > 1) total = eval(*n.args[1], f);
      collection one(1);
      for (std::size_t i = 0; i < in.size(); ++i) {
        one[0] = in[i];
        frame g;
        g.this_ = &one;
        g.index = static_cast<std::int64_t>(i);
        g.total = &total;
        collection next = eval(*n.args[0], g);
        total = std::move(next);
      }
      return total;
    }
    case fn::f_sort: {
      struct keyed {
        item it;
        std::vector<collection> keys;
      };
      std::vector<keyed> rows;
      std::vector<bool> desc;
      std::vector<const ast*> exprs;
      for (const auto& a : n.args) {
        if (a->kind == node_kind::unary_minus) {
          desc.push_back(true);
          exprs.push_back(a->input.get());
        } else {
          desc.push_back(false);
          exprs.push_back(a.get());
        }
      }
      collection one(1);
      for (std::size_t i = 0; i < in.size(); ++i) {
        keyed k{in[i], {}};
        one[0] = in[i];
        frame g;
        g.this_ = &one;
        g.index = static_cast<std::int64_t>(i);
        for (const ast* e : exprs) k.keys.push_back(eval(*e, g));
        if (exprs.empty()) k.keys.push_back(one);
        rows.push_back(std::move(k));
      }
      if (exprs.empty()) desc.push_back(false);
      std::stable_sort(rows.begin(), rows.end(), [&](const keyed& a, const keyed& b) {
        for (std::size_t k = 0; k < a.keys.size(); ++k) {
          const collection& x = a.keys[k];
          const collection& y = b.keys[k];
          if (x.empty() || y.empty()) {
            if (x.empty() != y.empty()) return x.empty();  // empty keys first, either direction
            continue;
          }
          auto c = items_compare(x[0], y[0], defs_);
          if (!c || *c == 0) continue;
          return desc[k] ? *c > 0 : *c < 0;
        }
        return false;
      });
      collection out;
      for (auto& r : rows) out.push_back(std::move(r.it));
      return out;
    }
    case fn::f_extension: {
      auto url = string_arg(*n.args[0], f);
      collection out;
      if (!url) return out;
      collection ext;
      for (const item& x : in) navigate(x, "extension", ext, 0);
      for (item& e : ext) {
        const value* u = e.node ? e.node->find("url") : nullptr;
        if (u && u->text() == *url) out.push_back(std::move(e));
      }
      return out;
    }
    case fn::f_hasValue: {
      if (in.size() != 1) return collection{item::make_boolean(false)};
      const item& x = in[0];
      bool has = x.kind != item_kind::node || (x.node && !x.node->is_object() && !x.node->is_array() && !x.node->is_null());
      return collection{item::make_boolean(has)};
    }
    case fn::f_getValue: {
      if (in.size() != 1) return {};
      const item& x = in[0];
      if (x.kind != item_kind::node) return in;
      if (!x.node || x.node->is_object() || x.node->is_array() || x.node->is_null()) return {};
      return collection{to_system(x, defs_)};
    }
    case fn::f_resolve: return resolve(in);
    case fn::f_conformsTo: {
      auto url = string_arg(*n.args[0], f);
      if (!url || in.empty()) return {};
      const std::string prefix = "http://hl7.org/fhir/StructureDefinition/";
      if (!url->starts_with(prefix) || !defs_.find_type(url->substr(prefix.size())))
        throw evaluation_error("conformsTo(): profile '" + *url + "' is not known (only core definitions are)");
      std::string type = url->substr(prefix.size());
      bool all = true;
      for (const item& x : in) all = all && type_matches(x, "FHIR", type, false);
      return collection{item::make_boolean(all)};
    }
    case fn::f_htmlChecks: return collection{item::make_boolean(true)};
    case fn::f_memberOf: throw evaluation_error("memberOf() needs a terminology service (not supported)");
    case fn::f_elementDefinition:
    case fn::f_slice:
    case fn::f_checkModifiers:
      throw evaluation_error(std::string(function_at(n.function).name) + "() needs profile support (not supported)");
    case fn::f_precision: {
      if (in.empty()) return {};
      item v = to_system(single(in, "precision"), defs_);
      if (v.kind == item_kind::decimal) return collection{item::make_integer(v.decimal_value.scale)};
      if (v.kind == item_kind::integer) return collection{item::make_integer(0)};
      if (v.kind == item_kind::date || v.kind == item_kind::datetime || v.kind == item_kind::time)
        return collection{item::make_integer(digits_of(v.temporal_value.prec, v.kind))};
      throw evaluation_error("precision() needs a number or date/time");
    }
    case fn::f_lowBoundary: return boundary(in, n, f, false);
    case fn::f_highBoundary: return boundary(in, n, f, true);
    case fn::f_comparable: {
      collection other = eval(*n.args[0], f);
      if (in.empty() || other.empty()) return {};
      item a = to_system(single(in, "comparable"), defs_), b = to_system(single(other, "comparable"), defs_);
      if (a.kind != item_kind::quantity || b.kind != item_kind::quantity) throw evaluation_error("comparable() needs quantities");
      return collection{item::make_boolean(units_comparable(a.string_value, b.string_value))};
    }
    default: break;
  }
  throw evaluation_error(std::string("function ") + function_at(n.function).name + "() is not implemented");
}

}  // namespace
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
