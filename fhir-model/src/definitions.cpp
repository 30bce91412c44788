#include "yilian/fhir/definitions.hpp"

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>

#include <algorithm>
#include <charconv>
#include <stdexcept>

// Bounds of fhir-model/definitions/r4-definitions.json, compiled in by embedded_definitions.S.
extern "C" {
extern const char yilian_r4_definitions_begin[];
extern const char yilian_r4_definitions_end[];
}

namespace yilian::fhir {

namespace {

using json_value = rapidjson::Value;

[[noreturn]] void malformed(const std::string& what) {
  throw std::runtime_error("FHIR definitions: " + what);
}

std::string_view string_member(const json_value& object, const char* key) {
  auto it = object.FindMember(key);
  if (it == object.MemberEnd()) return {};
  if (!it->value.IsString()) malformed(std::string("\"") + key + "\" is not a string");
  return {it->value.GetString(), it->value.GetStringLength()};
}

bool flag_member(const json_value& object, const char* key) {
  auto it = object.FindMember(key);
  if (it == object.MemberEnd()) return false;
  if (it->value.IsBool()) return it->value.GetBool();
  if (it->value.IsInt()) return it->value.GetInt() != 0;
  malformed(std::string("\"") + key + "\" is not a flag");
}

std::vector<std::string> strings_member(const json_value& object, const char* key) {
  std::vector<std::string> out;
  auto it = object.FindMember(key);
  if (it == object.MemberEnd()) return out;
  if (!it->value.IsArray()) malformed(std::string("\"") + key + "\" is not an array");
  out.reserve(it->value.Size());
  for (const auto& v : it->value.GetArray()) {
    if (!v.IsString()) malformed(std::string("\"") + key + "\" holds a non-string");
    out.emplace_back(v.GetString(), v.GetStringLength());
  }
  return out;
}

type_kind parse_kind(std::string_view kind) {
  if (kind == "primitive-type") return type_kind::primitive_type;
  if (kind == "complex-type") return type_kind::complex_type;
  if (kind == "resource") return type_kind::resource;
  if (kind == "logical") return type_kind::logical;
  malformed("unknown type kind \"" + std::string(kind) + "\"");
}

binding_strength parse_strength(std::string_view s) {
  if (s.empty()) return binding_strength::none;
  if (s == "required") return binding_strength::required;
  if (s == "extensible") return binding_strength::extensible;
  if (s == "preferred") return binding_strength::preferred;
  if (s == "example") return binding_strength::example;
  malformed("unknown binding strength \"" + std::string(s) + "\"");
}

json_primitive parse_json_primitive(std::string_view s) {
  if (s.empty() || s == "string") return json_primitive::string;
  if (s == "number") return json_primitive::number;
  if (s == "boolean") return json_primitive::boolean;
  malformed("unknown JSON representation \"" + std::string(s) + "\"");
}

std::uint32_t parse_max(std::string_view s) {
  if (s.empty()) return 1;
  if (s == "*") return unbounded;
  std::uint32_t n = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
  if (ec != std::errc() || end != s.data() + s.size()) malformed("bad max \"" + std::string(s) + "\"");
  return n;
}

std::string_view last_segment(std::string_view path) {
  auto dot = path.rfind('.');
  return dot == std::string_view::npos ? path : path.substr(dot + 1);
}

std::string_view parent_path(std::string_view path) {
  auto dot = path.rfind('.');
  return dot == std::string_view::npos ? std::string_view() : path.substr(0, dot);
}

std::string_view without_version(std::string_view url) {
  auto bar = url.find('|');
  return bar == std::string_view::npos ? url : url.substr(0, bar);
}

// "valueQuantity" names the choice "value[x]" with type "Quantity"; "valueDateTime" → "dateTime".
bool choice_suffix_matches(std::string_view suffix, std::string_view type_code) {
  if (suffix.size() != type_code.size() || suffix.empty()) return false;
  char first = type_code[0];
  if (first >= 'a' && first <= 'z') first = static_cast<char>(first - 'a' + 'A');
  return suffix[0] == first && suffix.substr(1) == type_code.substr(1);
}

const std::vector<const element_def*> no_children;

}  // namespace

struct definitions::builder {
  definitions& d;
  // Inline children by parent path, in snapshot order.
  std::unordered_map<std::string, std::vector<const element_def*>*> inline_children;

  std::vector<const element_def*>* new_list() {
    d.child_lists_.push_back(std::make_unique<std::vector<const element_def*>>());
    return d.child_lists_.back().get();
  }

  static void read_element(const json_value& e, element_def& out) {
    if (!e.IsObject()) malformed("element is not an object");
    out.path = std::string(string_member(e, "p"));
    if (out.path.empty()) malformed("element without a path");
    out.name = std::string(last_segment(out.path));
    if (auto it = e.FindMember("min"); it != e.MemberEnd()) {
      if (!it->value.IsUint()) malformed(out.path + ": bad min");
      out.min = it->value.GetUint();
    }
    out.max = parse_max(string_member(e, "max"));
    out.type_codes = strings_member(e, "t");
    out.target_profiles = strings_member(e, "tp");
    out.content_reference = std::string(string_member(e, "cr"));
    out.binding = parse_strength(string_member(e, "bs"));
    out.value_set = std::string(without_version(string_member(e, "vs")));
    out.is_summary = flag_member(e, "s");
    out.is_modifier = flag_member(e, "mod");
    out.xml_attribute = flag_member(e, "attr");
    out.xhtml = flag_member(e, "xhtml");
  }

  void read_type(const json_value& t) {
    if (!t.IsObject()) malformed("type is not an object");
    auto type = std::make_unique<type_def>();
    type->name = std::string(string_member(t, "name"));
    if (type->name.empty()) malformed("type without a name");
    type->kind = parse_kind(string_member(t, "kind"));
    type->is_abstract = flag_member(t, "abstract");
    type->base = std::string(string_member(t, "base"));
    type->json = parse_json_primitive(string_member(t, "json"));
    type->regex = std::string(string_member(t, "regex"));

    auto elements = t.FindMember("elements");
    if (elements == t.MemberEnd() || !elements->value.IsArray() || elements->value.Empty())
      malformed(type->name + ": no elements");
    const auto& list = elements->value;
    read_element(list[0], type->root);
    if (type->root.path != type->name) malformed(type->name + ": first element is not the root");
    d.elements_by_path_.emplace(type->root.path, &type->root);

    const std::string primitive_value =
        type->kind == type_kind::primitive_type ? type->name + ".value" : std::string();
    for (rapidjson::SizeType i = 1; i < list.Size(); ++i) {
      auto e = std::make_unique<element_def>();
      read_element(list[i], *e);
      if (!e->path.starts_with(type->name + ".")) malformed(e->path + ": outside " + type->name);
      const element_def* ptr = e.get();
      d.elements_.push_back(std::move(e));
      if (!d.elements_by_path_.emplace(ptr->path, ptr).second) malformed(ptr->path + ": duplicate path");
      // A primitive's value is its JSON value itself (or an XML attribute), never a child element.
      if (ptr->path == primitive_value) continue;
      auto& children = inline_children[std::string(parent_path(ptr->path))];
      if (!children) children = new_list();
      children->push_back(ptr);
    }
    if (!d.types_by_name_.emplace(type->name, type.get()).second) malformed(type->name + ": duplicate type");
    d.types_.push_back(std::move(type));
  }

  const std::vector<const element_def*>* inline_list(const std::string& path) const {
    auto it = inline_children.find(path);
    return it == inline_children.end() ? nullptr : it->second;
  }

  // Children of a non-root element; contentReferences are resolved afterwards.
  const std::vector<const element_def*>* children_of(const element_def& e) const {
    if (const auto* own = inline_list(e.path)) return own;
    if (!e.content_reference.empty() || e.type_codes.size() != 1) return &no_children;
    auto it = d.types_by_name_.find(e.type_codes.front());
    if (it == d.types_by_name_.end()) return &no_children;
    const type_def& type = *it->second;
    // Primitive-valued elements have no children; Resource-typed ones (Bundle.entry.resource,
    // contained) take their shape from the resourceType in the data.
    if (type.kind != type_kind::complex_type) return &no_children;
    return type.root.children;
  }

  void resolve() {
    for (auto& type : d.types_) {
      const auto* own = inline_list(type->name);
      type->root.children = own ? own : &no_children;
    }
    for (auto& e : d.elements_) e->children = children_of(*e);
    for (auto& e : d.elements_) {
      if (e->content_reference.empty()) continue;
      std::string_view target = e->content_reference;
      if (auto hash = target.find('#'); hash != std::string_view::npos) target = target.substr(hash + 1);
      auto it = d.elements_by_path_.find(std::string(target));
      if (it == d.elements_by_path_.end()) malformed(e->path + ": unresolved contentReference " + e->content_reference);
      const element_def* referenced = it->second;
      for (int hops = 0; !referenced->content_reference.empty(); ++hops) {
        std::string_view next = referenced->content_reference;
        next = next.substr(next.find('#') + 1);
        auto again = d.elements_by_path_.find(std::string(next));
        if (hops > 8 || again == d.elements_by_path_.end()) malformed(e->path + ": unresolvable contentReference");
        referenced = again->second;
      }
      e->children = referenced->children;
    }
    for (auto& type : d.types_) {
      if (type->kind == type_kind::resource && !type->is_abstract) d.resource_types_.push_back(type->name);
    }
    std::sort(d.resource_types_.begin(), d.resource_types_.end());
  }

  void read_value_sets(const json_value& sets) {
    if (!sets.IsObject()) malformed("\"valueSets\" is not an object");
    for (const auto& vs : sets.GetObject()) {
      if (!vs.value.IsObject()) malformed("value set is not an object");
      auto& codes = d.value_sets_[std::string(vs.name.GetString(), vs.name.GetStringLength())];
      for (const auto& system : vs.value.GetObject()) {
        if (!system.value.IsArray()) malformed("value set codes are not an array");
        std::string prefix(system.name.GetString(), system.name.GetStringLength());
        prefix += '|';
        for (const auto& code : system.value.GetArray()) {
          if (!code.IsString()) malformed("value set code is not a string");
          codes.insert(prefix + std::string(code.GetString(), code.GetStringLength()));
        }
      }
    }
  }

  void read_search_params(const json_value& params) {
    if (!params.IsArray()) malformed("\"searchParams\" is not an array");
    d.search_params_.reserve(params.Size());
    for (const auto& p : params.GetArray()) {
      if (!p.IsObject()) malformed("search parameter is not an object");
      search_param_def sp;
      sp.url = std::string(string_member(p, "url"));
      sp.code = std::string(string_member(p, "code"));
      if (sp.code.empty()) malformed("search parameter without a code");
      sp.base = strings_member(p, "base");
      sp.type = std::string(string_member(p, "type"));
      sp.expression = std::string(string_member(p, "expression"));
      sp.target = strings_member(p, "target");
      sp.modifiers = strings_member(p, "modifier");
      sp.comparators = strings_member(p, "comparator");
      if (auto it = p.FindMember("component"); it != p.MemberEnd()) {
        if (!it->value.IsArray()) malformed("\"component\" is not an array");
        for (const auto& c : it->value.GetArray()) {
          if (!c.IsObject()) malformed("component is not an object");
          sp.components.push_back({std::string(string_member(c, "definition")),
                                   std::string(string_member(c, "expression"))});
        }
      }
      const std::size_t index = d.search_params_.size();
      for (const auto& base : sp.base) d.search_params_by_base_[base].push_back(index);
      d.search_params_.push_back(std::move(sp));
    }
  }

  void read_compartments(const json_value& compartments) {
    if (!compartments.IsObject()) malformed("\"compartments\" is not an object");
    for (const auto& c : compartments.GetObject()) {
      if (!c.value.IsObject()) malformed("compartment is not an object");
      auto& out = d.compartments_[std::string(c.name.GetString(), c.name.GetStringLength())];
      for (const auto& m : c.value.GetObject()) {
        std::string member(m.name.GetString(), m.name.GetStringLength());
        if (!m.value.IsArray() || m.value.Empty()) malformed("compartment member " + member + " has no parameters");
        auto& params = out.params_by_member[member];
        for (const auto& code : m.value.GetArray()) {
          if (!code.IsString()) malformed("compartment parameter is not a string");
          params.emplace_back(code.GetString(), code.GetStringLength());
        }
        out.members.push_back(std::move(member));
      }
      std::sort(out.members.begin(), out.members.end());
    }
  }
};

std::unique_ptr<definitions> definitions::load(std::string_view compact_json) {
  rapidjson::Document doc;
  doc.Parse(compact_json.data(), compact_json.size());
  if (doc.HasParseError()) {
    malformed(std::string("JSON error at offset ") + std::to_string(doc.GetErrorOffset()) + ": " +
              rapidjson::GetParseError_En(doc.GetParseError()));
  }
  if (!doc.IsObject()) malformed("not a JSON object");
  std::unique_ptr<definitions> defs(new definitions());
  builder b{*defs, {}};
  auto types = doc.FindMember("types");
  if (types == doc.MemberEnd() || !types->value.IsArray()) malformed("no \"types\" array");
  for (const auto& t : types->value.GetArray()) b.read_type(t);
  b.resolve();
  if (auto it = doc.FindMember("valueSets"); it != doc.MemberEnd()) b.read_value_sets(it->value);
  if (auto it = doc.FindMember("searchParams"); it != doc.MemberEnd()) b.read_search_params(it->value);
  if (auto it = doc.FindMember("compartments"); it != doc.MemberEnd()) b.read_compartments(it->value);
  return defs;
}

const definitions& definitions::r4() {
  static const std::unique_ptr<definitions> instance = load(std::string_view(
      yilian_r4_definitions_begin, static_cast<std::size_t>(yilian_r4_definitions_end - yilian_r4_definitions_begin)));
  return *instance;
}

const type_def* definitions::find_type(std::string_view name) const noexcept {
  auto it = types_by_name_.find(std::string(name));
  return it == types_by_name_.end() ? nullptr : it->second;
}

bool definitions::is_resource_type(std::string_view name) const noexcept {
  const type_def* t = find_type(name);
  return t && t->kind == type_kind::resource;
}

const element_def* definitions::find_child(const element_def& parent, std::string_view json_name,
                                           std::string* chosen_type) const noexcept {
  if (!parent.children) return nullptr;
  for (const element_def* child : *parent.children) {
    if (child->name == json_name) {
      if (chosen_type) {
        if (child->type_codes.size() == 1)
          *chosen_type = child->type_codes.front();
        else
          chosen_type->clear();
      }
      return child;
    }
  }
  for (const element_def* child : *parent.children) {
    if (!child->is_choice()) continue;
    std::string_view base = child->choice_base();
    if (json_name.size() <= base.size() || !json_name.starts_with(base)) continue;
    std::string_view suffix = json_name.substr(base.size());
    for (const std::string& code : child->type_codes) {
      if (choice_suffix_matches(suffix, code)) {
        if (chosen_type) *chosen_type = code;
        return child;
      }
    }
  }
  return nullptr;
}

const element_def* definitions::find_element(std::string_view path) const noexcept {
  if (auto it = elements_by_path_.find(std::string(path)); it != elements_by_path_.end()) return it->second;
  auto dot = path.find('.');
  const type_def* type = find_type(path.substr(0, dot));
  if (!type) return nullptr;
  const element_def* current = &type->root;
  std::string chosen;
  while (dot != std::string_view::npos) {
    path = path.substr(dot + 1);
    dot = path.find('.');
    std::string_view segment = path.substr(0, dot);
    if (current->is_choice()) {
      // "Observation.valueQuantity.unit": continue inside the chosen type.
      const type_def* chosen_def = chosen.empty() ? nullptr : find_type(chosen);
      if (!chosen_def) return nullptr;
      current = &chosen_def->root;
    }
    const element_def* child = find_child(*current, segment, &chosen);
    if (!child) return nullptr;
    current = child;
  }
  return current;
}

const std::unordered_set<std::string>* definitions::value_set_codes(std::string_view url) const noexcept {
  auto it = value_sets_.find(std::string(without_version(url)));
  return it == value_sets_.end() ? nullptr : &it->second;
}

std::vector<const search_param_def*> definitions::search_params(std::string_view resource_type) const {
  std::vector<const search_param_def*> out;
  // The type itself, then its ancestors (DomainResource, Resource).
  std::string name(resource_type);
  for (int depth = 0; depth < 8 && !name.empty(); ++depth) {
    if (auto it = search_params_by_base_.find(name); it != search_params_by_base_.end()) {
      for (std::size_t index : it->second) {
        const search_param_def* p = &search_params_[index];
        if (std::find(out.begin(), out.end(), p) == out.end()) out.push_back(p);
      }
    }
    const type_def* type = find_type(name);
    name = type ? type->base : std::string();
  }
  return out;
}

const search_param_def* definitions::find_search_param(std::string_view resource_type,
                                                       std::string_view code) const noexcept {
  std::string name(resource_type);
  for (int depth = 0; depth < 8 && !name.empty(); ++depth) {
    if (auto it = search_params_by_base_.find(name); it != search_params_by_base_.end()) {
      for (std::size_t index : it->second) {
        if (search_params_[index].code == code) return &search_params_[index];
      }
    }
    const type_def* type = find_type(name);
    name = type ? type->base : std::string();
  }
  return nullptr;
}

const std::vector<std::string>* definitions::compartment_params(std::string_view compartment_type,
                                                               std::string_view resource_type) const noexcept {
  auto c = compartments_.find(std::string(compartment_type));
  if (c == compartments_.end()) return nullptr;
  auto m = c->second.params_by_member.find(std::string(resource_type));
  return m == c->second.params_by_member.end() ? nullptr : &m->second;
}

const std::vector<std::string>& definitions::compartment_members(std::string_view compartment_type) const noexcept {
  static const std::vector<std::string> none;
  auto c = compartments_.find(std::string(compartment_type));
  return c == compartments_.end() ? none : c->second.members;
}

}  // namespace yilian::fhir
