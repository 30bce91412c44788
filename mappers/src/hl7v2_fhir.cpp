// HL7 v2 -> FHIR R4: the shared machinery (field access, identifiers, codes, entries, validation)
// and the dispatch by message type. Segment maps live in hl7v2_fhir_adt.cpp, hl7v2_fhir_oru.cpp and
// hl7v2_fhir_orders.cpp, hl7v2_fhir_schedule_document.cpp.
#include "yilian/mappers/hl7v2_fhir.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <cstdio>

#include "hl7v2_fhir_mapper.hpp"
#include "yilian/fhir/validator.hpp"
#include "yilian/profiles/alliance.hpp"

namespace yilian::mappers::hl7v2 {

bool mapping_result::has_errors() const noexcept {
  for (const auto& p : problems)
    if (!p.is_warning) return true;
  return false;
}

std::optional<std::string> standard_code_system(std::string_view v2_system) {
  static const std::map<std::string, std::string, std::less<>> known = {
      {"LN", "http://loinc.org"},
      {"LOINC", "http://loinc.org"},
      {"SCT", "http://snomed.info/sct"},
      {"SNM", "http://snomed.info/sct"},
      {"SNOMED", "http://snomed.info/sct"},
      {"SNOMEDCT", "http://snomed.info/sct"},
      {"I10", "http://hl7.org/fhir/sid/icd-10"},
      {"ICD10", "http://hl7.org/fhir/sid/icd-10"},
      {"I10C", "http://hl7.org/fhir/sid/icd-10-cm"},
      {"I9", "http://hl7.org/fhir/sid/icd-9-cm"},
      {"I9C", "http://hl7.org/fhir/sid/icd-9-cm"},
      {"UCUM", "http://unitsofmeasure.org"},
      {"C4", "http://www.ama-assn.org/go/cpt"},
      {"CPT", "http://www.ama-assn.org/go/cpt"},
      {"NDC", "http://hl7.org/fhir/sid/ndc"},
      {"CVX", "http://hl7.org/fhir/sid/cvx"},
      {"RXNORM", "http://www.nlm.nih.gov/research/umls/rxnorm"},
      {"ISO3166_1", "urn:iso:std:iso:3166"},
      {"CDCREC", "urn:oid:2.16.840.1.113883.6.238"},
  };
  if (v2_system.empty()) return std::nullopt;
  if (auto it = known.find(v2_system); it != known.end()) return it->second;
  // HL7 tables: "HL70078", "HL7 0078".
  if (v2_system.size() >= 7 && v2_system.substr(0, 3) == "HL7") {
    std::string digits;
    for (char c : v2_system.substr(3))
      if (std::isdigit(static_cast<unsigned char>(c)))
        digits += c;
      else if (c != ' ')
        return std::nullopt;
    if (digits.size() == 4) return "http://terminology.hl7.org/CodeSystem/v2-" + digits;
    return std::nullopt;
  }
  bool oid =
      std::isdigit(static_cast<unsigned char>(v2_system.front())) && v2_system.find('.') != std::string_view::npos;
  for (char c : v2_system)
    if (!std::isdigit(static_cast<unsigned char>(c)) && c != '.') oid = false;
  if (oid) return "urn:oid:" + std::string(v2_system);
  return std::nullopt;
}

std::optional<std::string> ucum_unit(std::string_view printed) {
  // Units as Chinese and international LIS print them, with their UCUM codes.
  static const std::map<std::string, std::string, std::less<>> units = {
      {"mmol/L", "mmol/L"},
      {"mmol/l", "mmol/L"},
      {"umol/L", "umol/L"},
      {"umol/l", "umol/L"},
      {"μmol/L", "umol/L"},
      {"µmol/L", "umol/L"},
      {"nmol/L", "nmol/L"},
      {"pmol/L", "pmol/L"},
      {"mol/L", "mol/L"},
      {"g/L", "g/L"},
      {"g/l", "g/L"},
      {"g/dL", "g/dL"},
      {"g/dl", "g/dL"},
      {"mg/L", "mg/L"},
      {"mg/dL", "mg/dL"},
      {"mg/dl", "mg/dL"},
      {"ug/L", "ug/L"},
      {"μg/L", "ug/L"},
      {"ng/mL", "ng/mL"},
      {"ng/ml", "ng/mL"},
      {"pg/mL", "pg/mL"},
      {"pg/ml", "pg/mL"},
      {"pg", "pg"},
      {"fL", "fL"},
      {"fl", "fL"},
      {"%", "%"},
      {"U/L", "U/L"},
      {"u/L", "U/L"},
      {"IU/L", "[IU]/L"},
      {"IU/mL", "[IU]/mL"},
      {"mIU/L", "m[IU]/L"},
      {"mIU/mL", "m[IU]/mL"},
      {"uIU/mL", "u[IU]/mL"},
      {"μIU/mL", "u[IU]/mL"},
      {"10*9/L", "10*9/L"},
      {"10^9/L", "10*9/L"},
      {"×10^9/L", "10*9/L"},
      {"x10^9/L", "10*9/L"},
      {"10E9/L", "10*9/L"},
      {"giga.l-1", "10*9/L"},
      {"10*12/L", "10*12/L"},
      {"10^12/L", "10*12/L"},
      {"×10^12/L", "10*12/L"},
      {"x10^12/L", "10*12/L"},
      {"10E12/L", "10*12/L"},
      {"tera.l-1", "10*12/L"},
      {"mm/h", "mm/h"},
      {"mm/hr", "mm/h"},
      {"s", "s"},
      {"sec", "s"},
      {"min", "min"},
      {"mL/min", "mL/min"},
      {"mEq/L", "meq/L"},
      {"meq/L", "meq/L"},
      {"mmHg", "mm[Hg]"},
      {"kg", "kg"},
      {"g", "g"},
      {"cm", "cm"},
      {"/min", "/min"},
      {"beats/min", "/min"},
      {"/uL", "/uL"},
      {"/μL", "/uL"},
      {"cells/uL", "/uL"},
      {"/HPF", "/[HPF]"},
      {"/LPF", "/[LPF]"},
      {"kg/m2", "kg/m2"},
      {"mOsm/kg", "mosm/kg"},
      {"ratio", "{ratio}"},
  };
  if (auto it = units.find(printed); it != units.end()) return it->second;
  return std::nullopt;
}

namespace detail {

// ---- field access ----

const field* field_at(const segment& s, int n) {
  if (n < 1 || static_cast<std::size_t>(n) > s.fields.size()) return nullptr;
  return &s.fields[static_cast<std::size_t>(n) - 1];
}

const repetition* repetition_at(const segment& s, int n, std::size_t r) {
  const field* f = field_at(s, n);
  if (!f || r >= f->repetitions.size() || f->repetitions[r].null) return nullptr;
  return &f->repetitions[r];
}

std::vector<const repetition*> repetitions(const segment& s, int n) {
  std::vector<const repetition*> out;
  if (const field* f = field_at(s, n))
    for (const auto& r : f->repetitions)
      if (!r.null && !r.components.empty()) out.push_back(&r);
  return out;
}

std::string part(const repetition* r, int c, int sc) {
  if (!r || c < 1 || static_cast<std::size_t>(c) > r->components.size()) return {};
  const auto& subs = r->components[static_cast<std::size_t>(c) - 1].subcomponents;
  if (sc < 1 || static_cast<std::size_t>(sc) > subs.size()) return {};
  return subs[static_cast<std::size_t>(sc) - 1];
}

std::string leaf(const segment& s, int f, int c, int sc) {
  return part(repetition_at(s, f, 0), c, sc);
}

bool has_cjk(std::string_view text) {
  for (unsigned char c : text)
    if (c >= 0xE3 && c <= 0xE9) return true;  // lead bytes of U+3000..U+9FFF in UTF-8
  return false;
}

std::string percent_encode(std::string_view text, std::string_view keep) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' ||
        keep.find(static_cast<char>(c)) != std::string_view::npos) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::vector<segment_ref> numbered_segments(const message& m) {
  std::vector<segment_ref> out;
  std::map<std::string, std::size_t, std::less<>> seen;
  for (const auto& s : m.segments) out.push_back(segment_ref{&s, ++seen[s.id]});
  return out;
}

// ---- JSON helpers ----

fhir::value str(std::string text) {
  return fhir::value::make_string(std::move(text));
}

void set_text(fhir::value& object, std::string_view name, const std::string& text) {
  if (!text.empty()) object.set(name, str(text));
}

void append(fhir::value& object, std::string_view name, fhir::value item) {
  fhir::value* list = object.find(name);
  if (!list) list = &object.set(name, fhir::value::make_array());
  list->push_back(std::move(item));
}

fhir::value reference(const std::string& urn, const std::string& display) {
  fhir::value ref = fhir::value::make_object();
  set_text(ref, "reference", urn);
  set_text(ref, "display", display);
  return ref;
}

// ---- the mapper ----

mapper::mapper(const message& m, const mapping_options& options, mapping_result& result)
    : msg(m), options(options), result(result) {
  facility = m.sending_facility();
  if (facility.empty())
    if (const segment* msh = m.find("MSH")) facility = leaf(*msh, 4, 2);
  control_id = m.control_id();
}

void mapper::problem_at(location where, error_code code, std::string text, bool warning) {
  result.problems.push_back(problem{std::move(where), code, std::move(text), warning});
}

location mapper::at(const segment_ref& s, int field, int component) const {
  location l;
  l.segment = s.seg->id;
  l.occurrence = s.occurrence;
  l.field = field;
  l.component = component;
  return l;
}

std::string mapper::local_system(std::string_view what) const {
  return "urn:yilian:local:" + percent_encode(facility.empty() ? "unknown" : facility) + ":" +
         percent_encode(what, ":");
}

std::string mapper::urn_for(std::string_view key) const {
  // Two FNV-1a 64-bit hashes of sender, control id and entry identity, formatted as a UUID
  // (version 8, RFC 9562 custom): stable for the same message, distinct per entry.
  auto fnv = [](std::string_view text, std::uint64_t h) {
    for (unsigned char c : text) {
      h ^= c;
      h *= 0x100000001b3ULL;
    }
    return h;
  };
  std::string input = facility + '\x1f' + control_id + '\x1f' + std::string(key);
  std::uint64_t hi = fnv(input, 0xcbf29ce484222325ULL);
  std::uint64_t lo = fnv(input, 0x84222325cbf29ce4ULL ^ hi);
  hi = (hi & 0xFFFFFFFFFFFF0FFFULL) | 0x8000ULL;
  lo = (lo & 0x3FFFFFFFFFFFFFFFULL) | 0x8000000000000000ULL;
  char buffer[48];
  std::snprintf(buffer, sizeof buffer, "urn:uuid:%08x-%04x-%04x-%04x-%012llx", static_cast<unsigned>(hi >> 32),
                static_cast<unsigned>((hi >> 16) & 0xFFFF), static_cast<unsigned>(hi & 0xFFFF),
                static_cast<unsigned>(lo >> 48), static_cast<unsigned long long>(lo & 0xFFFFFFFFFFFFULL));
  return buffer;
}

std::optional<std::string> mapper::datetime(const std::string& ts, const location& where) {
  if (ts.empty()) return std::nullopt;
  auto converted = hl7_to_fhir_datetime(ts, options.default_offset);
  if (!converted) problem_at(where, error_code::data_type, "not a valid timestamp: '" + ts + "'", false);
  return converted;
}

std::optional<std::string> mapper::date(const std::string& ts, const location& where) {
  if (ts.empty()) return std::nullopt;
  auto converted = hl7_to_fhir_date(ts);
  if (!converted) problem_at(where, error_code::data_type, "not a valid date: '" + ts + "'", false);
  return converted;
}

std::string mapper::authority_system(const std::string& namespace_id, const std::string& universal_id,
                                     const std::string& universal_type, std::string_view fallback,
                                     const std::string& identifier_type) const {
  // "AUTHORITY^TYPE" entries first (one hospital assigns MRNs and visit numbers), then "AUTHORITY".
  for (const std::string* authority : {&namespace_id, &universal_id}) {
    if (authority->empty()) continue;
    if (!identifier_type.empty())
      if (auto it = options.authority_systems.find(*authority + "^" + identifier_type);
          it != options.authority_systems.end())
        return it->second;
    if (auto it = options.authority_systems.find(*authority); it != options.authority_systems.end()) return it->second;
  }
  if (!universal_id.empty()) {
    if (universal_type == "ISO" || standard_code_system(universal_id).value_or("").starts_with("urn:oid:"))
      return "urn:oid:" + universal_id;
    if (universal_type == "URI" || universal_type == "URL") return universal_id;
    if (universal_type == "UUID" || universal_type == "GUID") return "urn:uuid:" + universal_id;
  }
  // An unconfigured authority still names who assigned the number: HIS and LIS that both say
  // "ZJRMYY" mean the same visit numbers, so the local system is the authority's, not the sender's.
  if (!namespace_id.empty())
    return "urn:yilian:local:" + percent_encode(namespace_id) + ":" + percent_encode(fallback, ":");
  return local_system(fallback);
}

std::optional<fhir::value> mapper::identifier_cx(const repetition* cx, std::string_view fallback,
                                                 const location& where) {
  std::string id = part(cx, 1);
  if (id.empty()) return std::nullopt;
  fhir::value identifier = fhir::value::make_object();
  std::string type = part(cx, 5);
  std::string system;
  if (id.size() == 18 && profiles::parse_national_id(id)) {
    system = std::string(profiles::identifier_system::national_id);
  } else {
    system = authority_system(part(cx, 4, 1), part(cx, 4, 2), part(cx, 4, 3), fallback, type);
    if (system == profiles::identifier_system::national_id)
      problem_at(where, error_code::data_type,
                 "居民身份证号 '" + id + "' fails the GB 11643 check (length, birth date or check digit)", false);
    else if (id.size() == 18 && type == "NNCHN")
      problem_at(where, error_code::data_type, "national id '" + id + "' fails the GB 11643 check", true);
  }
  if (system == profiles::identifier_system::national_id && type.empty()) type = "NNCHN";
  if (!type.empty()) {
    fhir::value concept_value = fhir::value::make_object();
    fhir::value c = fhir::value::make_object();
    c.set("system", str("http://terminology.hl7.org/CodeSystem/v2-0203"));
    c.set("code", str(type));
    append(concept_value, "coding", std::move(c));
    identifier.set("type", std::move(concept_value));
  }
  identifier.set("system", str(system));
  identifier.set("value", str(id));
  return identifier;
}

std::optional<fhir::value> mapper::identifier_ei(const repetition* ei, int first, std::string_view fallback,
                                                 std::string_view type) {
  std::string id = part(ei, first);
  if (id.empty()) return std::nullopt;
  fhir::value identifier = fhir::value::make_object();
  if (!type.empty()) {
    fhir::value concept_value = fhir::value::make_object();
    fhir::value c = fhir::value::make_object();
    c.set("system", str("http://terminology.hl7.org/CodeSystem/v2-0203"));
    c.set("code", str(std::string(type)));
    append(concept_value, "coding", std::move(c));
    identifier.set("type", std::move(concept_value));
  }
  identifier.set("system",
                 str(authority_system(part(ei, first + 1), part(ei, first + 2), part(ei, first + 3), fallback)));
  identifier.set("value", str(id));
  return identifier;
}

// Same for an EI packed into sub-components of one component (EIP, SPM-2).
std::optional<fhir::value> mapper::identifier_ei_sub(const repetition* r, int component, std::string_view fallback,
                                                     std::string_view type) {
  std::string id = part(r, component, 1);
  if (id.empty()) return std::nullopt;
  fhir::value identifier = fhir::value::make_object();
  if (!type.empty()) {
    fhir::value concept_value = fhir::value::make_object();
    fhir::value c = fhir::value::make_object();
    c.set("system", str("http://terminology.hl7.org/CodeSystem/v2-0203"));
    c.set("code", str(std::string(type)));
    append(concept_value, "coding", std::move(c));
    identifier.set("type", std::move(concept_value));
  }
  identifier.set("system",
                 str(authority_system(part(r, component, 2), part(r, component, 3), part(r, component, 4), fallback)));
  identifier.set("value", str(id));
  return identifier;
}

std::optional<fhir::value> mapper::codeable_concept(const repetition* cwe, const location& where, bool offer_local) {
  if (!cwe) return std::nullopt;
  fhir::value concept_value = fhir::value::make_object();
  bool standard = false;
  std::vector<local_code> locals;
  for (int first : {1, 4}) {
    std::string code = part(cwe, first);
    std::string display = part(cwe, first + 1);
    std::string v2_system = part(cwe, first + 2);
    if (code.empty()) continue;
    fhir::value c = fhir::value::make_object();
    auto system = standard_code_system(v2_system);
    if (system) {
      standard = true;
    } else {
      system = local_system(v2_system.empty() ? "code" : "code:" + v2_system);
      locals.push_back(local_code{facility, v2_system, *system, code, display});
    }
    c.set("system", str(*system));
    set_text(c, "version", part(cwe, first == 1 ? 7 : 8));
    c.set("code", str(code));
    set_text(c, "display", display);
    append(concept_value, "coding", std::move(c));
  }
  if (offer_local) {
    for (const auto& local : locals) {
      std::optional<coding> translated;
      if (options.translate) translated = options.translate(local);
      if (translated && !translated->code.empty()) {
        fhir::value c = fhir::value::make_object();
        set_text(c, "system", translated->system);
        c.set("code", str(translated->code));
        set_text(c, "display", translated->display);
        append(concept_value, "coding", std::move(c));
        standard = true;
      }
    }
    if (!standard && !locals.empty())
      problem_at(where, error_code::table_value_not_found,
                 "local code '" + locals.front().code + "'" +
                     (locals.front().v2_system.empty() ? "" : " (" + locals.front().v2_system + ")") + " from '" +
                     facility + "' has no standard equivalent; kept as local coding",
                 true);
  }
  std::string text = part(cwe, 9);
  if (text.empty() && !concept_value.find("coding")) text = part(cwe, 2);
  set_text(concept_value, "text", text);
  if (concept_value.members().empty()) return std::nullopt;
  return concept_value;
}

fhir::value mapper::table_concept(std::string_view system, const std::string& code, const std::string& display) {
  fhir::value c = fhir::value::make_object();
  c.set("system", str(std::string(system)));
  c.set("code", str(code));
  set_text(c, "display", display);
  fhir::value concept_value = fhir::value::make_object();
  append(concept_value, "coding", std::move(c));
  return concept_value;
}

std::optional<fhir::value> mapper::human_name(const repetition* xpn) {
  if (!xpn) return std::nullopt;
  fhir::value name = fhir::value::make_object();
  static const std::map<std::string, std::string, std::less<>> uses = {
      {"L", "official"}, {"D", "usual"}, {"M", "maiden"},   {"N", "nickname"}, {"S", "anonymous"},
      {"T", "temp"},     {"A", "usual"}, {"B", "official"}, {"C", "official"}, {"U", "usual"}};
  if (auto it = uses.find(part(xpn, 7)); it != uses.end()) name.set("use", str(it->second));
  std::string family = part(xpn, 1, 1);
  std::string given = part(xpn, 2);
  std::string middle = part(xpn, 3);
  if (has_cjk(family) || has_cjk(given)) name.set("text", str(family + given + middle));
  set_text(name, "family", family);
  if (!given.empty()) append(name, "given", str(given));
  if (!middle.empty()) append(name, "given", str(middle));
  if (std::string prefix = part(xpn, 5); !prefix.empty()) append(name, "prefix", str(prefix));
  if (std::string suffix = part(xpn, 4); !suffix.empty()) append(name, "suffix", str(suffix));
  if (std::string degree = part(xpn, 6); !degree.empty()) append(name, "suffix", str(degree));
  if (name.members().empty() || (name.members().size() == 1 && name.find("use"))) return std::nullopt;
  return name;
}

std::optional<fhir::value> mapper::address(const repetition* xad) {
  if (!xad) return std::nullopt;
  fhir::value a = fhir::value::make_object();
  static const std::map<std::string, std::pair<const char*, const char*>, std::less<>> kinds = {
      {"H", {"home", nullptr}},  {"B", {"work", nullptr}},   {"O", {"work", nullptr}},
      {"C", {"temp", nullptr}},  {"M", {nullptr, "postal"}}, {"BA", {"old", nullptr}},
      {"BR", {"home", nullptr}}, {"P", {"home", nullptr}},   {"BDL", {"home", nullptr}}};
  if (auto it = kinds.find(part(xad, 7)); it != kinds.end()) {
    if (it->second.first) a.set("use", str(it->second.first));
    if (it->second.second) a.set("type", str(it->second.second));
  }
  std::string street = part(xad, 1, 1);
  for (int sc = 2; sc <= 3; ++sc)
    if (std::string more = part(xad, 1, sc); !more.empty()) street += (has_cjk(street) ? "" : " ") + more;
  std::string city = part(xad, 3), state = part(xad, 4), country = part(xad, 6);
  if (has_cjk(street + city + state)) set_text(a, "text", state + city + street + part(xad, 2));
  if (!street.empty()) append(a, "line", str(street));
  if (std::string other = part(xad, 2); !other.empty()) append(a, "line", str(other));
  set_text(a, "city", city);
  set_text(a, "district", part(xad, 9));
  set_text(a, "state", state);
  set_text(a, "postalCode", part(xad, 5));
  set_text(a, "country", country);
  bool only_use = true;
  for (const auto& m : a.members())
    if (m.name != "use" && m.name != "type") only_use = false;
  if (only_use) return std::nullopt;
  return a;
}

std::optional<fhir::value> mapper::contact_point(const repetition* xtn, std::string_view default_use) {
  if (!xtn) return std::nullopt;
  std::string use_code = part(xtn, 2), equipment = part(xtn, 3);
  std::string number = part(xtn, 4);
  std::string system = "phone";
  if (equipment == "Internet" || equipment == "X.400" || use_code == "NET") {
    system = "email";
  } else {
    if (equipment == "FX")
      system = "fax";
    else if (equipment == "BP")
      system = "pager";
    number.clear();
    std::string local = part(xtn, 7);
    if (!local.empty()) {
      std::string country = part(xtn, 5), area = part(xtn, 6), extension = part(xtn, 8);
      number = (country.empty() ? "" : "+" + country + " ") + (area.empty() ? "" : area + " ") + local +
               (extension.empty() ? "" : " ext " + extension);
    } else {
      number = part(xtn, 1);
    }
  }
  if (number.empty()) number = part(xtn, 1);
  if (number.empty()) return std::nullopt;
  fhir::value cp = fhir::value::make_object();
  cp.set("system", str(system));
  cp.set("value", str(number));
  std::string use(default_use);
  if (equipment == "CP")
    use = "mobile";
  else if (use_code == "WPN")
    use = "work";
  else if (use_code == "PRN")
    use = "home";
  else if (use_code == "EMR")
    use = "temp";
  set_text(cp, "use", use);
  return cp;
}

std::optional<std::string> mapper::gender(const std::string& code, const location& where) {
  if (code.empty()) return std::nullopt;
  static const std::map<std::string, std::string, std::less<>> table = {
      {"M", "male"},
      {"F", "female"},
      {"O", "other"},
      {"A", "other"},
      {"N", "other"},
      {"U", "unknown"},
      // GB/T 2261.1 codes, as Chinese HIS send them in PID-8
      {"1", "male"},
      {"2", "female"},
      {"0", "unknown"},
      {"9", "other"}};
  if (auto it = table.find(code); it != table.end()) return it->second;
  problem_at(where, error_code::table_value_not_found, "administrative sex '" + code + "' is not in table 0001", true);
  return std::nullopt;
}

std::string mapper::add_entry(std::string_view key, fhir::value resource, const std::optional<fhir::value>& identity,
                              const location& where) {
  if (auto it = keyed_urns.find(std::string(key)); it != keyed_urns.end()) return it->second;
  std::string type = resource.find("resourceType")->text();
  std::string urn = urn_for(key);
  fhir::value request = fhir::value::make_object();
  if (identity) {
    request.set("method", str("PUT"));
    request.set("url", str(type + "?identifier=" + percent_encode(identity->find("system")->text(), ":/") + "%7C" +
                           percent_encode(identity->find("value")->text(), ":/")));
  } else {
    request.set("method", str("POST"));
    request.set("url", str(type));
    problem_at(where, error_code::required_field_missing,
               type + " has no business identifier: replaying this message creates another " + type, true);
  }
  fhir::value entry = fhir::value::make_object();
  entry.set("fullUrl", str(urn));
  entry.set("resource", std::move(resource));
  entry.set("request", std::move(request));
  entries.push_back(std::move(entry));
  entry_locations.push_back(where);
  keyed_urns.emplace(key, urn);
  return urn;
}

fhir::value* mapper::entry_resource(const std::string& urn) {
  for (auto& e : entries)
    if (e.find("fullUrl")->text() == urn) return e.find("resource");
  return nullptr;
}

std::optional<std::string> mapper::practitioner(const repetition* xcn, const location& where, std::string* display) {
  if (!xcn) return std::nullopt;
  auto name = human_name_xcn(xcn);
  if (display) {
    display->clear();
    if (name) {
      if (const fhir::value* t = name->find("text"))
        *display = t->text();
      else {
        std::string family = part(xcn, 2, 1), given = part(xcn, 3);
        *display = given.empty() ? family : given + " " + family;
      }
    }
  }
  std::string id = part(xcn, 1);
  if (id.empty()) return std::nullopt;
  fhir::value identifier = fhir::value::make_object();
  identifier.set("system", str(authority_system(part(xcn, 9, 1), part(xcn, 9, 2), part(xcn, 9, 3), "practitioner",
                                                part(xcn, 13))));
  identifier.set("value", str(id));
  fhir::value resource = fhir::value::make_object();
  resource.set("resourceType", str("Practitioner"));
  append(resource, "identifier", identifier);
  if (name) append(resource, "name", std::move(*name));
  std::string key = "Practitioner|" + identifier.find("system")->text() + "|" + id;
  return add_entry(key, std::move(resource), identifier, where);
}

std::optional<fhir::value> mapper::human_name_xcn(const repetition* xcn) {
  if (!xcn) return std::nullopt;
  fhir::value name = fhir::value::make_object();
  std::string family = part(xcn, 2, 1), given = part(xcn, 3), middle = part(xcn, 4);
  if (has_cjk(family) || has_cjk(given)) name.set("text", str(family + given + middle));
  set_text(name, "family", family);
  if (!given.empty()) append(name, "given", str(given));
  if (!middle.empty()) append(name, "given", str(middle));
  if (std::string prefix = part(xcn, 6); !prefix.empty()) append(name, "prefix", str(prefix));
  if (name.members().empty()) return std::nullopt;
  return name;
}

std::optional<std::string> mapper::organization(const repetition* xon, const location& where) {
  if (!xon) return std::nullopt;
  std::string name = part(xon, 1);
  std::string id = part(xon, 10);
  std::string system;
  if (!id.empty()) {
    system = authority_system(part(xon, 6, 1), part(xon, 6, 2), part(xon, 6, 3), "organization");
  } else if (!(id = part(xon, 3)).empty()) {
    system = authority_system(part(xon, 6, 1), part(xon, 6, 2), part(xon, 6, 3), "organization");
  } else if (!name.empty()) {
    // No organization identifier sent: the name, as this sender spells it, is the identity.
    id = name;
    system = local_system("organization-name");
  } else {
    return std::nullopt;
  }
  fhir::value identifier = fhir::value::make_object();
  identifier.set("system", str(system));
  identifier.set("value", str(id));
  fhir::value resource = fhir::value::make_object();
  resource.set("resourceType", str("Organization"));
  append(resource, "identifier", identifier);
  resource.set("active", fhir::value::make_boolean(true));
  set_text(resource, "name", name);
  return add_entry("Organization|" + system + "|" + id, std::move(resource), identifier, where);
}

void mapper::validate_entries() {
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const fhir::value& resource = *entries[i].find("resource");
    fhir::issue_list issues;
    fhir::validate_resource(resource, issues);
    profiles::check_alliance_rules(resource, issues);
    for (const auto& issue : issues.all()) {
      if (issue.level != fhir::severity::error && issue.level != fhir::severity::fatal) continue;
      problem_at(entry_locations[i], error_code::data_type,
                 "mapped " + resource.find("resourceType")->text() + " is invalid at " + issue.location + ": " +
                     issue.diagnostics,
                 false);
    }
  }
}

fhir::value mapper::bundle() {
  fhir::value b = fhir::value::make_object();
  b.set("resourceType", str("Bundle"));
  if (!control_id.empty()) {
    fhir::value identifier = fhir::value::make_object();
    identifier.set("system", str(local_system("message")));
    identifier.set("value", str(control_id));
    b.set("identifier", std::move(identifier));
  }
  b.set("type", str("transaction"));
  if (const segment* msh = msg.find("MSH")) {
    std::string ts = leaf(*msh, 7);
    if (auto t = hl7_to_fhir_datetime(ts, options.default_offset); t && fhir::is_valid_primitive("instant", *t))
      b.set("timestamp", str(*t));
  }
  fhir::value list = fhir::value::make_array();
  for (auto& e : entries) list.push_back(std::move(e));
  b.set("entry", std::move(list));
  return b;
}

}  // namespace detail

mapping_result map_to_fhir(const message& m, const mapping_options& options) {
  mapping_result result;
  detail::mapper mapper(m, options, result);
  std::string type = m.message_type(), event = m.trigger_event();
  location msh9{"MSH", 1, 9, 0, 1, 0};
  static const std::array<std::string_view, 11> adt_events = {"A01", "A02", "A03", "A04", "A05", "A08",
                                                              "A11", "A13", "A28", "A31", "A40"};
  if (type == "ADT") {
    if (std::find(adt_events.begin(), adt_events.end(), event) == adt_events.end()) {
      result.supported = false;
      msh9.component = 2;
      mapper.problem_at(msh9, error_code::unsupported_event, "ADT event '" + event + "' is not supported", false);
    } else {
      mapper.map_adt(event);
    }
  } else if (type == "ORU" && event == "R01") {
    mapper.map_oru();
  } else if ((type == "ORM" && event == "O01") || (type == "OML" && event == "O21")) {
    mapper.map_orders();
  } else if (type == "SIU" && (event == "S12" || event == "S13" || event == "S14" || event == "S15")) {
    mapper.map_schedule(event);
  } else if (type == "MDM" && event == "T02") {
    mapper.map_document();
  } else {
    result.supported = false;
    bool known_type = type == "ORU" || type == "ORM" || type == "OML" || type == "SIU" || type == "MDM";
    if (known_type) msh9.component = 2;
    mapper.problem_at(msh9, known_type ? error_code::unsupported_event : error_code::unsupported_message_type,
                      "message type '" + type + "^" + event + "' is not supported", false);
  }
  if (result.supported && options.validate) mapper.validate_entries();
  result.bundle = mapper.bundle();
  return result;
}

}  // namespace yilian::mappers::hl7v2
