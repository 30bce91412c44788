// FHIRPath evaluator state and tree navigation, shared by fhirpath_eval.cpp (operators, entry
// points) and fhirpath_functions.cpp (the function library). Private to fhir-model.
#pragma once

#include <algorithm>
#include <cstdint>
#include <chrono>
#include <cmath>
#include <ctime>
#include <optional>
#include <string>
#include <unordered_set>

#include "fhirpath_internal.hpp"

namespace yilian::fhir::fhirpath::detail {

struct frame {
  const collection* this_ = nullptr;  // focus of leading names and $this
  std::int64_t index = -1;
  const collection* total = nullptr;
};

inline bool is_upper(char c) { return c >= 'A' && c <= 'Z'; }

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
        if (v.kind == item_kind::integer) {
          if (v.integer_value == INT64_MIN) throw evaluation_error("integer overflow");
          v.integer_value = -v.integer_value;
        }
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
    if (el->type_codes.empty() && el->content_reference.size() > 1) {
      // Questionnaire.item.item: the type of the element the contentReference names.
      if (const element_def* target = defs_.find_element(std::string_view(el->content_reference).substr(1));
          target && target->type_codes.size() == 1)
        return target->type_codes[0];
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
      if (index >= 0) {
        c.path += '[';
        c.path.append(std::to_string(index));
        c.path += ']';
      }
    }
    out.push_back(std::move(c));
  }

  // Adds the items of member `json_name` (value and "_json_name" companion) of object `obj`.
  void add_member(const item& parent, const value& obj, std::string_view json_name, std::string_view fp_name,
                  const element_def* el, std::string_view type, collection& out) {
    // One pass finds the value and its "_name" companion (no key string is built).
    const value* v = nullptr;
    const value* comp = nullptr;
    for (const member& m : obj.members()) {
      std::string_view mn = m.name;
      if (mn == json_name) v = &m.val;
      else if (mn.size() == json_name.size() + 1 && mn[0] == '_' && mn.substr(1) == json_name) comp = &m.val;
    }
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

  // Text of an item whose equality is plain text equality (system strings and string-typed
  // primitives other than dates/times); such items never equal any other kind of item.
  static const std::string* plain_text(const item& x) {
    if (x.kind == item_kind::string) return &x.string_value;
    if (x.kind != item_kind::node || !x.node || !x.node->is_string()) return nullptr;
    std::string_view t = x.fhir_type;
    if (t == "date" || t == "dateTime" || t == "instant" || t == "time") return nullptr;
    return &x.node->text();
  }

  // Distinct union of collections in order (union operator, union(), distinct()). Strings go
  // through a hash set (code lists can be long); other items are compared pairwise.
  collection distinct_union(const collection& a, const collection* b) {
    collection out;
    out.reserve(a.size() + (b ? b->size() : 0));
    std::unordered_set<std::string_view> texts;
    collection others;
    auto add = [&](const item& x) {
      if (const std::string* t = plain_text(x)) {
        if (texts.insert(*t).second) out.push_back(x);
        return;
      }
      if (contains_item(others, x)) return;
      others.push_back(x);
      out.push_back(x);
    };
    for (const item& x : a) add(x);
    if (b)
      for (const item& x : *b) add(x);
    return out;
  }

  collection distinct(const collection& in) { return distinct_union(in, nullptr); }

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
      case binary_op::union_: return distinct_union(a, &b);
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
            if (x == INT64_MIN && y == -1) throw evaluation_error("integer overflow");
            r = x / y;
            break;
          case binary_op::mod:
            if (y == 0) return {};
            r = y == -1 ? 0 : x % y;
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

}  // namespace yilian::fhir::fhirpath::detail
