// FHIRPath Patch: operations are applied to a copy of the resource, which replaces the original
// only when every operation succeeded. Targets are found by evaluating the operation's path with
// the FHIRPath engine and locating the returned node pointers in the (mutable) copy.
#include "yilian/fhir/fhirpath_patch.hpp"

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "yilian/fhir/fhirpath.hpp"

namespace yilian::fhir {
namespace {

struct patch_error {
  issue_type type;
  std::string message;
  std::string location;
};

// One step from a parent object to a child: member name (never "_name") and, for lists, the index.
struct step {
  std::string name;
  std::ptrdiff_t index = -1;
};

// A value taken from a `value` part, ready to be written under a JSON name.
struct typed_value {
  value main;              // null for a primitive with only id/extension
  value companion;         // the `_name` object of a primitive, null when absent
  std::string type_suffix; // "Date", "CodeableConcept" (empty for anonymous or resource values)
};

const value* find_part(const value& parameter, std::string_view name) {
  const value* parts = parameter.find("part");
  if (parts == nullptr || !parts->is_array()) return nullptr;
  for (const value& p : parts->items()) {
    const value* n = p.find("name");
    if (n != nullptr && n->is_string() && n->text() == name) return &p;
  }
  return nullptr;
}

// The value[x] member of a part: {name, value}; nullptr when the part has none.
const member* value_member(const value& part) {
  for (const member& m : part.members()) {
    if (m.name.size() > 5 && m.name.starts_with("value")) return &m;
  }
  return nullptr;
}

std::optional<std::string> part_text(const value& parameter, std::string_view name) {
  const value* p = find_part(parameter, name);
  if (p == nullptr) return std::nullopt;
  const member* m = value_member(*p);
  if (m == nullptr) return std::nullopt;
  if (!m->val.is_string() && !m->val.is_number() && !m->val.is_boolean()) return std::nullopt;
  return m->val.text();
}

std::string lower_first(std::string s) {
  if (!s.empty() && s[0] >= 'A' && s[0] <= 'Z') s[0] = static_cast<char>(s[0] - 'A' + 'a');
  return s;
}
std::string upper_first(std::string s) {
  if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = static_cast<char>(s[0] - 'a' + 'A');
  return s;
}

// FHIR type named by a value[x] suffix: "Date" -> "date", "CodeableConcept" -> itself.
const type_def* suffix_type(std::string_view suffix, const definitions& defs) {
  if (const type_def* t = defs.find_type(lower_first(std::string(suffix)));
      t != nullptr && t->kind == type_kind::primitive_type)
    return t;
  return defs.find_type(suffix);
}

// The element definition whose children are those of a node item.
const element_def* container_def(const fhirpath::item& it, const definitions& defs) {
  if (it.element != nullptr && it.element->children != nullptr && !it.element->children->empty())
    return it.element;
  if (!it.fhir_type.empty()) {
    if (const type_def* t = defs.find_type(it.fhir_type)) return &t->root;
  }
  return it.element;
}

// Children parent of an element definition: inline children, or those of its single type.
const element_def* children_parent(const element_def* e, std::string_view chosen_type, const definitions& defs) {
  if (e == nullptr) return nullptr;
  if (e->children != nullptr && !e->children->empty()) return e;
  std::string type = !chosen_type.empty() ? std::string(chosen_type)
                     : e->type_codes.size() == 1 ? e->type_codes[0]
                                                 : std::string();
  if (const type_def* t = defs.find_type(type)) return &t->root;
  return e;
}

value convert_primitive(const value& v, json_primitive kind) {
  if (!v.is_string() && !v.is_number() && !v.is_boolean()) return v;
  switch (kind) {
    case json_primitive::number: return value::make_number(v.text());
    case json_primitive::boolean: return value::make_boolean(v.text() == "true");
    case json_primitive::string: break;
  }
  return value::make_string(v.text());
}

bool is_empty_container(const value& v) {
  return (v.is_object() && v.members().empty()) || (v.is_array() && v.items().empty());
}

bool all_null(const value& arr) {
  for (const value& v : arr.items())
    if (!v.is_null()) return false;
  return true;
}

// Drops a `_name` companion array that no longer carries anything.
void tidy_companion(value& obj, const std::string& name) {
  value* comp = obj.find("_" + name);
  if (comp != nullptr && comp->is_array() && all_null(*comp)) obj.erase("_" + name);
}

// Inserts into the list `name` of `obj` at `index`, keeping the companion list aligned.
void insert_at(value& obj, const std::string& name, std::size_t index, typed_value tv) {
  value* arr = obj.find(name);
  if (arr == nullptr || !arr->is_array()) {
    obj.set(name, value::make_array());
    arr = obj.find(name);
  }
  std::size_t old_size = arr->items().size();
  arr->items().insert(arr->items().begin() + static_cast<std::ptrdiff_t>(index), std::move(tv.main));
  value* comp = obj.find("_" + name);
  if (comp == nullptr && tv.companion.is_null()) return;
  if (comp == nullptr || !comp->is_array()) {
    obj.set("_" + name, value::make_array());
    comp = obj.find("_" + name);
  }
  if (comp->items().size() < old_size) comp->items().resize(old_size);
  comp->items().insert(comp->items().begin() + static_cast<std::ptrdiff_t>(index), std::move(tv.companion));
  tidy_companion(obj, name);
}

void remove_at(value& obj, const std::string& name, std::size_t index) {
  if (value* arr = obj.find(name); arr != nullptr && arr->is_array() && index < arr->items().size()) {
    arr->items().erase(arr->items().begin() + static_cast<std::ptrdiff_t>(index));
    if (arr->items().empty()) obj.erase(name);
  }
  if (value* comp = obj.find("_" + name); comp != nullptr && comp->is_array()) {
    if (index < comp->items().size()) comp->items().erase(comp->items().begin() + static_cast<std::ptrdiff_t>(index));
    tidy_companion(obj, name);
  }
}

void move_within(std::vector<value>& items, std::size_t from, std::size_t to) {
  value v = std::move(items[from]);
  items.erase(items.begin() + static_cast<std::ptrdiff_t>(from));
  items.insert(items.begin() + static_cast<std::ptrdiff_t>(to), std::move(v));
}

// Removes empty objects and arrays (and all-null companion lists) left behind by a deletion.
void prune(value& v, bool companion_list) {
  if (v.is_object()) {
    auto& ms = v.members();
    for (member& m : ms) prune(m.val, m.name.starts_with("_") && m.val.is_array());
    std::erase_if(ms, [](const member& m) {
      return is_empty_container(m.val) || (m.name.starts_with("_") && m.val.is_array() && all_null(m.val));
    });
  } else if (v.is_array()) {
    auto& items = v.items();
    for (value& item : items) prune(item, false);
    if (companion_list) {
      for (value& item : items)
        if (is_empty_container(item)) item = value();
    } else {
      std::erase_if(items, [](const value& item) { return is_empty_container(item); });
    }
  }
}

// Depth-first search for `target` (a node or companion pointer of an item) in `cur`.
bool find_steps(const value& cur, const value* target, std::vector<step>& out) {
  if (&cur == target) return true;
  if (!cur.is_object()) return false;
  for (const member& m : cur.members()) {
    if (m.val.is_array()) {
      for (std::size_t i = 0; i < m.val.items().size(); ++i) {
        out.push_back(step{m.name, static_cast<std::ptrdiff_t>(i)});
        if (find_steps(m.val.items()[i], target, out)) return true;
        out.pop_back();
      }
    } else {
      out.push_back(step{m.name, -1});
      if (find_steps(m.val, target, out)) return true;
      out.pop_back();
    }
  }
  return false;
}

class patcher {
 public:
  patcher(value& work, const definitions& defs) : work_(work), defs_(defs) {}

  std::optional<patch_error> apply(const value& op);

 private:
  std::optional<patch_error> fail(issue_type type, std::string message, std::string location = {}) {
    return patch_error{type, std::move(message), location.empty() ? path_ : std::move(location)};
  }
  // Evaluates `text` on the working copy; node items only.
  std::optional<patch_error> select(const std::string& text, fhirpath::collection& out);
  // Locates a node item in the working copy: parent object and the last step.
  std::optional<patch_error> locate(const fhirpath::item& it, value*& parent, step& last);
  value* navigate(const std::vector<step>& steps, std::size_t count);
  std::optional<patch_error> make_value(const value& part, const element_def* elem, std::string_view chosen_type,
                                        typed_value& out);
  // Resolves the child `name` of `parent` given the value's type suffix: definition and JSON name.
  const element_def* resolve_child(const element_def* parent, const std::string& name, const std::string& suffix,
                                   std::string& json_name, std::string& chosen_type) const;
  std::optional<patch_error> put_child(value& obj, const element_def* parent, const std::string& name,
                                       const value& part);

  value& work_;
  const definitions& defs_;
  std::string path_;
};

std::optional<patch_error> patcher::select(const std::string& text, fhirpath::collection& out) {
  fhirpath::expression expr;
  try {
    expr = fhirpath::compile(text);
  } catch (const fhirpath::syntax_error& e) {
    return fail(issue_type::invalid, std::string("invalid FHIRPath: ") + e.what());
  }
  fhirpath::evaluate_options options;
  options.defs = &defs_;
  options.track_paths = true;
  try {
    out = expr.evaluate(work_, options);
  } catch (const fhirpath::evaluation_error& e) {
    return fail(issue_type::processing, std::string("FHIRPath evaluation failed: ") + e.what());
  }
  for (const fhirpath::item& it : out) {
    if (!it.is_node()) return fail(issue_type::processing, "path " + text + " does not select elements");
  }
  return std::nullopt;
}

value* patcher::navigate(const std::vector<step>& steps, std::size_t count) {
  value* cur = &work_;
  for (std::size_t i = 0; i < count && cur != nullptr; ++i) {
    cur = cur->find(steps[i].name);
    if (cur != nullptr && steps[i].index >= 0) {
      if (!cur->is_array() || static_cast<std::size_t>(steps[i].index) >= cur->items().size()) return nullptr;
      cur = &cur->items()[static_cast<std::size_t>(steps[i].index)];
    }
  }
  return cur;
}

std::optional<patch_error> patcher::locate(const fhirpath::item& it, value*& parent, step& last) {
  const value* target = it.node != nullptr ? it.node : it.companion;
  std::vector<step> steps;
  if (target == nullptr || !find_steps(work_, target, steps))
    return fail(issue_type::processing, "cannot locate " + (it.path.empty() ? path_ : it.path) + " in the resource");
  if (steps.empty()) return fail(issue_type::processing, "the operation cannot apply to the resource itself");
  parent = navigate(steps, steps.size() - 1);
  last = steps.back();
  if (last.name.starts_with("_")) last.name.erase(0, 1);
  if (parent == nullptr || !parent->is_object())
    return fail(issue_type::processing, "cannot locate the parent of " + it.path);
  return std::nullopt;
}

const element_def* patcher::resolve_child(const element_def* parent, const std::string& name,
                                          const std::string& suffix, std::string& json_name,
                                          std::string& chosen_type) const {
  if (parent == nullptr) return nullptr;
  json_name = name;
  chosen_type.clear();
  const element_def* d = defs_.find_child(*parent, name, &chosen_type);
  if (d != nullptr && (!d->is_choice() || name != d->choice_base())) return d;
  if (!suffix.empty()) {
    std::string typed = name + upper_first(suffix);
    d = defs_.find_child(*parent, typed, &chosen_type);
    if (d != nullptr && d->is_choice()) {
      json_name = typed;
      return d;
    }
  }
  return nullptr;
}

std::optional<patch_error> patcher::make_value(const value& part, const element_def* elem,
                                               std::string_view chosen_type, typed_value& out) {
  if (const member* m = value_member(part)) {
    out.type_suffix = m->name.substr(5);
    out.main = m->val;
    if (const value* c = part.find("_" + m->name)) out.companion = *c;
    const type_def* own = suffix_type(out.type_suffix, defs_);
    if (own == nullptr) return fail(issue_type::invalid, "unknown value type " + m->name);
    if (elem != nullptr && !elem->is_choice() && !elem->type_codes.empty()) {
      // A datatype must be the element's own type; a primitive fits any primitive element (its
      // text is re-typed below: valueString "42" into an integer element).
      bool fits = false;
      for (const std::string& code : elem->type_codes) {
        const type_def* et = defs_.find_type(code);
        if (code == own->name || (own->kind == type_kind::primitive_type && et != nullptr &&
                                  et->kind == type_kind::primitive_type))
          fits = true;
      }
      if (!fits)
        return fail(issue_type::invalid, "a value of type " + own->name + " does not fit " + elem->path);
    }
    if (own->kind == type_kind::primitive_type) {
      const type_def* target = nullptr;
      if (!chosen_type.empty()) target = defs_.find_type(chosen_type);
      else if (elem != nullptr && elem->type_codes.size() == 1) target = defs_.find_type(elem->type_codes[0]);
      if (target == nullptr || target->kind != type_kind::primitive_type) target = own;
      out.main = convert_primitive(out.main, target->json);
    }
    return std::nullopt;
  }
  if (const value* r = part.find("resource")) {
    out.main = *r;
    return std::nullopt;
  }
  const value* parts = part.find("part");
  if (parts == nullptr || !parts->is_array() || parts->items().empty())
    return fail(issue_type::invalid, "the value part has neither value[x], resource nor parts");
  const element_def* parent = children_parent(elem, chosen_type, defs_);
  if (parent == nullptr || parent->children == nullptr || parent->children->empty())
    return fail(issue_type::invalid, "parts given for an element that has no children");
  out.main = value::make_object();
  for (const value& sub : parts->items()) {
    const value* n = sub.find("name");
    if (n == nullptr || !n->is_string() || n->text().empty())
      return fail(issue_type::invalid, "a part of the value has no name");
    if (auto err = put_child(out.main, parent, n->text(), sub)) return err;
  }
  return std::nullopt;
}

// Adds the element described by `part` as child `name` of `obj` (whose definition is `parent`).
std::optional<patch_error> patcher::put_child(value& obj, const element_def* parent, const std::string& name,
                                              const value& part) {
  std::string suffix;
  if (const member* m = value_member(part)) suffix = m->name.substr(5);
  std::string json_name, chosen;
  const element_def* d = resolve_child(parent, name, suffix, json_name, chosen);
  if (d == nullptr)
    return fail(issue_type::processing,
                "unknown element '" + name + "' in " + (parent != nullptr ? parent->path : std::string("?")));
  if (d->is_choice() && chosen.empty()) chosen = std::string(defs_.find_type(suffix) ? suffix : lower_first(suffix));
  typed_value tv;
  if (auto err = make_value(part, d, chosen, tv)) return err;
  if (d->is_array()) {
    const value* arr = obj.find(json_name);
    const value* comp = obj.find("_" + json_name);
    std::size_t size = std::max(arr != nullptr ? arr->items().size() : 0, comp != nullptr ? comp->items().size() : 0);
    insert_at(obj, json_name, size, std::move(tv));
    return std::nullopt;
  }
  // A choice has one value: any typed sibling counts as present.
  for (const member& m : obj.members()) {
    std::string_view n = m.name;
    if (n.starts_with("_")) n.remove_prefix(1);
    bool same = n == json_name;
    if (!same && d->is_choice()) {
      std::string_view base = d->choice_base();
      same = n.size() > base.size() && n.starts_with(base) && n[base.size()] >= 'A' && n[base.size()] <= 'Z' &&
             defs_.find_child(*parent, n) == d;
    }
    if (same) return fail(issue_type::processing, "element '" + json_name + "' is already present (single element)");
  }
  if (!tv.main.is_null()) obj.set(json_name, std::move(tv.main));
  if (!tv.companion.is_null()) obj.set("_" + json_name, std::move(tv.companion));
  return std::nullopt;
}

// The `_name` companion object of the primitive at `last` under `parent`, created when absent.
value* companion_object(value& parent, const step& last) {
  std::string key = "_" + last.name;
  if (last.index < 0) {
    value* c = parent.find(key);
    if (c == nullptr || !c->is_object()) {
      parent.set(key, value::make_object());
      c = parent.find(key);
    }
    return c;
  }
  const value* arr = parent.find(last.name);
  std::size_t size = arr != nullptr && arr->is_array() ? arr->items().size() : 0;
  value* comp = parent.find(key);
  if (comp == nullptr || !comp->is_array()) {
    parent.set(key, value::make_array());
    comp = parent.find(key);
  }
  auto idx = static_cast<std::size_t>(last.index);
  if (comp->items().size() < std::max(size, idx + 1)) comp->items().resize(std::max(size, idx + 1));
  value& c = comp->items()[idx];
  if (!c.is_object()) c = value::make_object();
  return &c;
}

std::optional<std::size_t> parse_index(const std::optional<std::string>& text) {
  if (!text) return std::nullopt;
  std::size_t v = 0;
  auto [p, ec] = std::from_chars(text->data(), text->data() + text->size(), v);
  if (ec != std::errc() || p != text->data() + text->size()) return std::nullopt;
  return v;
}

std::optional<patch_error> patcher::apply(const value& op) {
  auto type = part_text(op, "type");
  auto path = part_text(op, "path");
  if (!type) return fail(issue_type::invalid, "missing part 'type'");
  if (!path || path->empty()) return fail(issue_type::invalid, "missing part 'path'");
  path_ = *path;
  const std::string& t = *type;
  if (t != "add" && t != "insert" && t != "delete" && t != "replace" && t != "move")
    return fail(issue_type::invalid, "unknown operation type '" + t + "'");

  fhirpath::collection found;
  if (auto err = select(path_, found)) return err;

  if (t == "delete") {
    if (found.empty()) return std::nullopt;
    if (found.size() > 1)
      return fail(issue_type::processing, "path " + path_ + " selects " + std::to_string(found.size()) +
                                              " elements; delete removes a single element");
    value* parent = nullptr;
    step last;
    if (auto err = locate(found[0], parent, last)) return err;
    if (last.index >= 0) {
      remove_at(*parent, last.name, static_cast<std::size_t>(last.index));
    } else {
      parent->erase(last.name);
      parent->erase("_" + last.name);
    }
    prune(work_, false);
    return std::nullopt;
  }

  if (t == "add") {
    auto name = part_text(op, "name");
    const value* vpart = find_part(op, "value");
    if (!name || name->empty()) return fail(issue_type::invalid, "add needs a 'name' part");
    if (vpart == nullptr) return fail(issue_type::invalid, "add needs a 'value' part");
    if (found.empty()) return fail(issue_type::processing, "No content found at " + path_ + " when adding");
    if (found.size() > 1)
      return fail(issue_type::processing, "path " + path_ + " selects " + std::to_string(found.size()) +
                                              " elements; add needs exactly one");
    const fhirpath::item& it = found[0];
    value* target = nullptr;
    if (it.node == &work_) {
      target = &work_;
    } else {
      value* parent = nullptr;
      step last;
      if (auto err = locate(it, parent, last)) return err;
      const type_def* td = defs_.find_type(it.fhir_type);
      if (td != nullptr && td->kind == type_kind::primitive_type) {
        // id and extension of a primitive live in its `_name` companion.
        target = companion_object(*parent, last);
      } else {
        target = const_cast<value*>(it.node);  // points into work_, which is ours to modify
      }
    }
    if (target == nullptr || !target->is_object())
      return fail(issue_type::processing, "cannot add to " + (it.path.empty() ? path_ : it.path) +
                                              ": it is not a complex element");
    return put_child(*target, container_def(it, defs_), *name, *vpart);
  }

  if (t == "replace") {
    const value* vpart = find_part(op, "value");
    if (vpart == nullptr) return fail(issue_type::invalid, "replace needs a 'value' part");
    if (found.size() != 1)
      return fail(issue_type::processing, "path " + path_ + " selects " + std::to_string(found.size()) +
                                              " elements; replace needs exactly one");
    const fhirpath::item& it = found[0];
    value* parent = nullptr;
    step last;
    if (auto err = locate(it, parent, last)) return err;
    std::string chosen;
    if (it.element != nullptr && it.element->is_choice()) {
      if (const member* m = value_member(*vpart)) {
        chosen = m->name.substr(5);
        const type_def* td = suffix_type(chosen, defs_);
        chosen = td != nullptr ? td->name : chosen;
      }
    }
    typed_value tv;
    if (auto err = make_value(*vpart, it.element, chosen, tv)) return err;
    if (last.index >= 0) {
      value* arr = parent->find(last.name);
      auto idx = static_cast<std::size_t>(last.index);
      if (arr != nullptr && arr->is_array() && idx < arr->items().size()) arr->items()[idx] = std::move(tv.main);
      value* comp = parent->find("_" + last.name);
      if (comp != nullptr || !tv.companion.is_null()) {
        std::size_t size = arr != nullptr ? arr->items().size() : 0;
        if (comp == nullptr) {
          parent->set("_" + last.name, value::make_array());
          comp = parent->find("_" + last.name);
        }
        if (comp->items().size() < size) comp->items().resize(size);
        comp->items()[idx] = std::move(tv.companion);
        tidy_companion(*parent, last.name);
      }
      return std::nullopt;
    }
    std::string new_name = last.name;
    if (it.element != nullptr && it.element->is_choice() && !tv.type_suffix.empty())
      new_name = std::string(it.element->choice_base()) + upper_first(tv.type_suffix);
    // Keep the element's position: rename in place.
    auto& ms = parent->members();
    bool placed = false;
    for (member& m : ms) {
      if (m.name == last.name && !tv.main.is_null()) {
        m.name = new_name;
        m.val = std::move(tv.main);
        placed = true;
        break;
      }
    }
    if (!placed) {
      parent->erase(last.name);
      if (!tv.main.is_null()) parent->set(new_name, std::move(tv.main));
    }
    if (new_name != last.name) parent->erase(last.name);
    parent->erase("_" + last.name);
    if (!tv.companion.is_null()) parent->set("_" + new_name, std::move(tv.companion));
    return std::nullopt;
  }

  if (t == "insert") {
    const value* vpart = find_part(op, "value");
    auto index = parse_index(part_text(op, "index"));
    if (vpart == nullptr) return fail(issue_type::invalid, "insert needs a 'value' part");
    if (!index) return fail(issue_type::invalid, "insert needs a non-negative integer 'index' part");
    value* parent = nullptr;
    std::string list_name;
    const element_def* elem = nullptr;
    std::string chosen;
    std::size_t size = 0;
    if (!found.empty()) {
      step last;
      if (auto err = locate(found[0], parent, last)) return err;
      if (last.index < 0) return fail(issue_type::processing, "path " + path_ + " does not select a list");
      list_name = last.name;
      elem = found[0].element;
      const value* arr = parent->find(list_name);
      size = arr != nullptr ? arr->items().size() : 0;
      if (*index > size)
        return fail(issue_type::processing, "index " + std::to_string(*index) + " is outside the list (" +
                                                std::to_string(size) + " items)");
      typed_value tv;
      if (auto err = make_value(*vpart, elem, chosen, tv)) return err;
      insert_at(*parent, list_name, *index, std::move(tv));
      return std::nullopt;
    }
    // Empty list: the path's last step names the list on its (single) parent.
    auto dot = path_.rfind('.');
    if (dot == std::string::npos || *index != 0)
      return fail(issue_type::processing, "No content found at " + path_ + " when inserting");
    std::string prefix = path_.substr(0, dot), name = path_.substr(dot + 1);
    fhirpath::collection owners;
    if (auto err = select(prefix, owners)) return err;
    if (owners.size() != 1 || owners[0].node == nullptr || !owners[0].node->is_object())
      return fail(issue_type::processing, "No content found at " + path_ + " when inserting");
    value* target = const_cast<value*>(owners[0].node);  // points into work_
    return put_child(*target, container_def(owners[0], defs_), name, *vpart);
  }

  // move
  auto source = parse_index(part_text(op, "source"));
  auto destination = parse_index(part_text(op, "destination"));
  if (!source || !destination)
    return fail(issue_type::invalid, "move needs non-negative integer 'source' and 'destination' parts");
  if (found.empty()) return fail(issue_type::processing, "No content found at " + path_ + " when moving");
  value* parent = nullptr;
  step last;
  if (auto err = locate(found[0], parent, last)) return err;
  if (last.index < 0) return fail(issue_type::processing, "path " + path_ + " does not select a list");
  value* arr = parent->find(last.name);
  std::size_t size = arr != nullptr ? arr->items().size() : 0;
  if (*source >= size || *destination >= size)
    return fail(issue_type::processing, "source " + std::to_string(*source) + " or destination " +
                                            std::to_string(*destination) + " is outside the list (" +
                                            std::to_string(size) + " items)");
  move_within(arr->items(), *source, *destination);
  if (value* comp = parent->find("_" + last.name); comp != nullptr && comp->is_array()) {
    if (comp->items().size() < size) comp->items().resize(size);
    move_within(comp->items(), *source, *destination);
  }
  return std::nullopt;
}

}  // namespace

bool apply_fhirpath_patch(value& resource, const value& parameters, issue_list& issues, const definitions& defs) {
  const value* rt = parameters.find("resourceType");
  if (!parameters.is_object() || rt == nullptr || rt->text() != "Parameters") {
    issues.error(issue_type::invalid, "FHIRPath Patch must be a Parameters resource");
    return false;
  }
  const value* params = parameters.find("parameter");
  if (params != nullptr && !params->is_array()) {
    issues.error(issue_type::invalid, "FHIRPath Patch: Parameters.parameter must be a list");
    return false;
  }
  value work = resource;
  patcher p(work, defs);
  std::size_t n = params != nullptr ? params->items().size() : 0;
  for (std::size_t i = 0; i < n; ++i) {
    const value& op = params->items()[i];
    const value* name = op.find("name");
    std::optional<patch_error> err;
    if (name == nullptr || name->text() != "operation") {
      err = patch_error{issue_type::invalid, "parameter is not named 'operation'", {}};
    } else {
      err = p.apply(op);
    }
    if (err) {
      auto type = part_text(op, "type");
      auto path = part_text(op, "path");
      std::string where = "operation " + std::to_string(i + 1) + " of " + std::to_string(n);
      if (type) where += " (" + *type + (path ? " " + *path : std::string()) + ")";
      issues.error(err->type, "FHIRPath Patch " + where + ": " + err->message,
                   err->location.empty() ? "Parameters.parameter[" + std::to_string(i) + "]" : err->location);
      return false;
    }
  }
  resource = std::move(work);
  return true;
}

}  // namespace yilian::fhir
