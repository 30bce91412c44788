// Write-time search indexing: every applicable SearchParameter's FHIRPath expression, compiled
// once, evaluated on each written resource; the values become rows of the index tables.
#include "search_index.hpp"

#include <algorithm>
#include <cstdio>
#include <mutex>
#include <pqxx/pqxx>
#include <set>
#include <shared_mutex>
#include <tuple>
#include <unordered_map>

#include "store_internal.hpp"
#include "yilian/fhir/fhirpath.hpp"

namespace yilian::gateway::detail {

namespace fp = fhir::fhirpath;

// ---------------------------------------------------------------------------------------------
// Normalisation

namespace {

// Appends the UTF-8 encoding of `cp`.
void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Decodes one code point at text[i]; returns its length, 0 for an invalid sequence.
std::size_t decode_utf8(std::string_view text, std::size_t i, char32_t& cp) {
  auto b = static_cast<unsigned char>(text[i]);
  std::size_t len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
  if (len == 0 || i + len > text.size()) return 0;
  cp = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
  for (std::size_t k = 1; k < len; ++k) {
    auto c = static_cast<unsigned char>(text[i + k]);
    if ((c & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (c & 0x3F);
  }
  return len;
}

// Base letters of U+00C0..U+017F (Latin-1 Supplement letters and Latin Extended-A), lower case;
// '\0' = keep the character. Index = code point - 0xC0.
constexpr const char* latin_base =
    "aaaaaaaceeeeiiii"   // C0-CF (C6 Æ handled below)
    "dnooooo\0ouuuuy\0\0" // D0-DF (D7 ×, DE Þ, DF ß handled below)
    "aaaaaaaceeeeiiii"   // E0-EF
    "dnooooo\0ouuuuy\0y" // F0-FF
    "aaaaaaccccccccdd"   // 100-10F
    "ddeeeeeeeeeegggg"   // 110-11F
    "gggghhhhiiiiiiii"   // 120-12F
    "ii\0\0jjkkklllllll" // 130-13F
    "lllnnnnnnnnnoooo"   // 140-14F
    "oo\0\0rrrrrrssssss" // 150-15F
    "ssttttttuuuuuuuu"   // 160-16F
    "uuuuwwyyyzzzzzzs";  // 170-17F

void append_folded(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
    return;
  }
  if (cp >= 0xC0 && cp <= 0x17F) {
    switch (cp) {
      case 0xC6: case 0xE6: out += "ae"; return;
      case 0xDF: out += "ss"; return;
      case 0xDE: case 0xFE: out += "th"; return;
      case 0x132: case 0x133: out += "ij"; return;
      case 0x152: case 0x153: out += "oe"; return;
      default: break;
    }
    char base = latin_base[cp - 0xC0];
    if (base) {
      out += base;
      return;
    }
  }
  if (cp >= 0xFF01 && cp <= 0xFF5E) {  // full-width ASCII forms
    append_folded(out, cp - 0xFF01 + 0x21);
    return;
  }
  if (cp == 0x3000) {  // ideographic space
    out += ' ';
    return;
  }
  if (cp >= 0x391 && cp <= 0x3A9 && cp != 0x3A2) cp += 0x20;       // Greek capitals
  else if (cp >= 0x410 && cp <= 0x42F) cp += 0x20;                  // Cyrillic capitals
  else if (cp >= 0x400 && cp <= 0x40F) cp += 0x50;
  append_utf8(out, cp);
}

}  // namespace

std::string normalise_string(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool pending_space = false;
  for (std::size_t i = 0; i < text.size();) {
    char32_t cp = 0;
    std::size_t len = decode_utf8(text, i, cp);
    if (len == 0) {  // invalid byte: kept as it is
      out += text[i++];
      continue;
    }
    i += len;
    bool space = cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r' || cp == 0x3000 || cp == 0xA0;
    if (space) {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out += ' ';
    pending_space = false;
    append_folded(out, cp);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Dates

namespace {

bool digits(std::string_view s, std::size_t pos, std::size_t n, int& out) {
  if (pos + n > s.size()) return false;
  out = 0;
  for (std::size_t k = 0; k < n; ++k) {
    char c = s[pos + k];
    if (c < '0' || c > '9') return false;
    out = out * 10 + (c - '0');
  }
  return true;
}

int days_in_month(int y, int m) {
  static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  return m == 2 && leap ? 29 : days[m - 1];
}

struct civil {
  int year = 0, month = 1, day = 1, hour = 0, minute = 0, second = 0;
  long nanos = 0;  // fraction of the second
};

// Adds one unit at the precision; fractional seconds add 10^-digits s.
civil add_unit(civil t, int precision, int fraction_digits) {
  auto carry_days = [&] {
    if (t.day > days_in_month(t.year, t.month)) {
      t.day = 1;
      if (++t.month > 12) {
        t.month = 1;
        ++t.year;
      }
    }
  };
  switch (precision) {
    case 0: ++t.year; break;
    case 1:
      if (++t.month > 12) {
        t.month = 1;
        ++t.year;
      }
      break;
    default: {
      long step_nanos = 0;
      int add_seconds = 0;
      if (precision == 2) add_seconds = 86400;
      else if (precision == 3) add_seconds = 60;
      else if (precision == 4) add_seconds = 1;
      else {
        step_nanos = 1;
        for (int k = fraction_digits; k < 9; ++k) step_nanos *= 10;
      }
      t.nanos += step_nanos;
      if (t.nanos >= 1000000000L) {
        t.nanos -= 1000000000L;
        add_seconds += 1;
      }
      long total = t.hour * 3600L + t.minute * 60L + t.second + add_seconds;
      while (total >= 86400) {
        total -= 86400;
        ++t.day;
        carry_days();
      }
      t.hour = static_cast<int>(total / 3600);
      t.minute = static_cast<int>(total / 60 % 60);
      t.second = static_cast<int>(total % 60);
    }
  }
  return t;
}

std::string format(const civil& t, const std::string& zone) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%09ld", t.year, t.month, t.day, t.hour, t.minute,
                t.second, t.nanos);
  return buf + zone;
}

}  // namespace

std::optional<date_range> fhir_date_range(std::string_view v) {
  civil t;
  int precision = 0;  // 0 year, 1 month, 2 day, 3 minute, 4 second, 5 fraction
  int fraction_digits = 0;
  if (!digits(v, 0, 4, t.year)) return std::nullopt;
  std::size_t pos = 4;
  if (pos < v.size() && v[pos] == '-') {
    if (!digits(v, pos + 1, 2, t.month) || t.month < 1 || t.month > 12) return std::nullopt;
    precision = 1;
    pos += 3;
    if (pos < v.size() && v[pos] == '-') {
      if (!digits(v, pos + 1, 2, t.day) || t.day < 1 || t.day > days_in_month(t.year, t.month)) return std::nullopt;
      precision = 2;
      pos += 3;
      if (pos < v.size() && v[pos] == 'T') {
        if (!digits(v, pos + 1, 2, t.hour) || v.size() < pos + 6 || v[pos + 3] != ':' ||
            !digits(v, pos + 4, 2, t.minute) || t.hour > 23 || t.minute > 59)
          return std::nullopt;
        precision = 3;
        pos += 6;
        if (pos < v.size() && v[pos] == ':') {
          if (!digits(v, pos + 1, 2, t.second) || t.second > 60) return std::nullopt;
          if (t.second == 60) t.second = 59;  // leap second
          precision = 4;
          pos += 3;
          if (pos < v.size() && v[pos] == '.') {
            ++pos;
            while (pos < v.size() && v[pos] >= '0' && v[pos] <= '9') {
              if (fraction_digits < 9) {
                t.nanos = t.nanos * 10 + (v[pos] - '0');
                ++fraction_digits;
              }
              ++pos;
            }
            if (fraction_digits == 0) return std::nullopt;
            for (int k = fraction_digits; k < 9; ++k) t.nanos *= 10;
            precision = 5;
          }
        }
      }
    }
  }
  std::string zone = "+08:00";  // the alliance's zone for values without one
  if (pos < v.size()) {
    if (precision < 3) return std::nullopt;  // a zone needs a time
    if (v[pos] == 'Z' && pos + 1 == v.size()) {
      zone = "+00:00";
    } else if ((v[pos] == '+' || v[pos] == '-') && pos + 6 == v.size() && v[pos + 3] == ':') {
      int h = 0, m = 0;
      if (!digits(v, pos + 1, 2, h) || !digits(v, pos + 4, 2, m) || h > 14 || m > 59) return std::nullopt;
      zone = std::string(v.substr(pos));
    } else {
      return std::nullopt;
    }
  }
  return date_range{format(t, zone), format(add_unit(t, precision, fraction_digits), zone)};
}

// ---------------------------------------------------------------------------------------------
// Extraction

namespace {

struct compiled_component {
  fp::expression expression;
  std::string type;  // the component parameter's type
};

struct compiled_param {
  const fhir::search_param_def* def = nullptr;
  fp::expression expression;
  std::vector<compiled_component> components;
};

// Compiled parameters per resource type, built once per definitions object on first use.
class compiled_params {
 public:
  explicit compiled_params(const fhir::definitions& defs) : defs_(defs) {}

  const std::vector<compiled_param>& for_type(const std::string& type) {
    {
      std::shared_lock lock(mutex_);
      if (auto it = by_type_.find(type); it != by_type_.end()) return it->second;
    }
    std::vector<compiled_param> list;
    for (const auto* def : defs_.search_params(type)) {
      if (def->type == "special" || def->expression.empty() || def->code == "_id" || def->code == "_lastUpdated")
        continue;
      compiled_param p;
      p.def = def;
      try {
        p.expression = fp::compile(def->expression);
        for (const auto& c : def->components) {
          const fhir::search_param_def* component = nullptr;
          for (const auto& candidate : defs_.all_search_params())
            if (candidate.url == c.definition) component = &candidate;
          if (!component) throw fp::syntax_error("unknown component " + c.definition, 0);
          p.components.push_back({fp::compile(c.expression), component->type});
        }
      } catch (const fp::syntax_error&) {
        continue;  // an expression this engine cannot compile is not indexed (and not searchable)
      }
      list.push_back(std::move(p));
    }
    std::unique_lock lock(mutex_);
    return by_type_.emplace(type, std::move(list)).first->second;
  }

 private:
  const fhir::definitions& defs_;
  std::shared_mutex mutex_;
  std::unordered_map<std::string, std::vector<compiled_param>> by_type_;
};

compiled_params& compiled_for(const fhir::definitions& defs) {
  static std::mutex mutex;
  static std::unordered_map<const fhir::definitions*, std::unique_ptr<compiled_params>> all;
  std::lock_guard lock(mutex);
  auto& slot = all[&defs];
  if (!slot) slot = std::make_unique<compiled_params>(defs);
  return *slot;
}

const std::string* string_member(const fhir::value* object, std::string_view name) {
  if (!object || !object->is_object()) return nullptr;
  const fhir::value* v = object->find(name);
  return v && v->is_string() && !v->text().empty() ? &v->text() : nullptr;
}

// Text of a primitive item (node or system value).
std::optional<std::string> primitive_text(const fp::item& it) {
  if (it.is_node()) {
    if (!it.node || it.node->is_object() || it.node->is_array() || it.node->is_null()) return std::nullopt;
    return it.node->text();
  }
  return it.to_string();
}

class row_builder {
 public:
  row_builder(index_rows& rows, const std::string& param, int group) : rows_(rows), param_(param), group_(group) {}

  void string_value(const std::string& s) {
    if (!s.empty()) rows_.strings.push_back({param_, normalise_string(s), s, group_});
  }

  void add_string(const fp::item& it) {
    std::string_view type = it.fhir_type;
    const fhir::value* n = it.node;
    if (it.is_node() && n && n->is_object()) {
      if (type == "HumanName") {
        for (const char* part : {"family", "text"})
          if (auto* s = string_member(n, part)) string_value(*s);
        for (const char* part : {"given", "prefix", "suffix"})
          if (const fhir::value* list = n->find(part); list && list->is_array())
            for (const auto& g : list->items())
              if (g.is_string()) string_value(g.text());
      } else if (type == "Address") {
        for (const char* part : {"city", "district", "state", "postalCode", "country", "text"})
          if (auto* s = string_member(n, part)) string_value(*s);
        if (const fhir::value* lines = n->find("line"); lines && lines->is_array())
          for (const auto& l : lines->items())
            if (l.is_string()) string_value(l.text());
      }
      return;
    }
    if (auto s = primitive_text(it)) string_value(*s);
  }

  void token(std::string system, std::string code, std::string text = {}, std::string param = {}) {
    if (code.empty() && system.empty() && text.empty()) return;
    rows_.tokens.push_back({param.empty() ? param_ : std::move(param), std::move(system), std::move(code),
                            text.empty() ? std::string() : normalise_string(text), group_});
  }

  void add_token(const fp::item& it) {
    std::string_view type = it.fhir_type;
    const fhir::value* n = it.node;
    if (it.is_node() && n && n->is_object()) {
      if (type == "Coding") {
        add_coding(*n, {});
      } else if (type == "CodeableConcept") {
        const std::string* text = string_member(n, "text");
        bool any = false;
        if (const fhir::value* codings = n->find("coding"); codings && codings->is_array())
          for (const auto& c : codings->items()) any |= add_coding(c, text ? *text : std::string());
        if (!any && text) token("", "", *text);  // text only: found by :text
      } else if (type == "Identifier") {
        const std::string* value = string_member(n, "value");
        const std::string* system = string_member(n, "system");
        const fhir::value* id_type = n->find("type");
        const std::string* type_text = string_member(id_type, "text");
        if (value) token(system ? *system : "", *value, type_text ? *type_text : "");
        if (value && id_type && id_type->is_object())
          if (const fhir::value* codings = id_type->find("coding"); codings && codings->is_array())
            for (const auto& c : codings->items())
              if (auto* code = string_member(&c, "code")) {
                auto* s = string_member(&c, "system");
                token(s ? *s : "", *code + "|" + *value, {}, param_ + ":of-type");
              }
      } else if (type == "ContactPoint") {
        if (auto* v = string_member(n, "value")) token("", *v);
      } else if (type == "Reference") {
        // Some token parameters point at a Reference's identifier.
        if (const fhir::value* id = n->find("identifier"); id && id->is_object()) {
          auto* v = string_member(id, "value");
          auto* s = string_member(id, "system");
          if (v) token(s ? *s : "", *v);
        }
      }
      return;
    }
    if (it.kind == fp::item_kind::boolean) {
      token("", it.boolean_value ? "true" : "false");
      return;
    }
    if (auto s = primitive_text(it)) token("", *s);
  }

  void add_reference(const fp::item& it) {
    const fhir::value* n = it.node;
    if (it.is_node() && n && n->is_object()) {
      if (auto* ref = string_member(n, "reference")) reference_text(*ref, false);
      if (const fhir::value* id = n->find("identifier"); id && id->is_object()) {
        auto* v = string_member(id, "value");
        auto* s = string_member(id, "system");
        if (v) token(s ? *s : "", *v, {}, param_ + ":identifier");
      }
      return;
    }
    if (auto s = primitive_text(it)) reference_text(*s, it.fhir_type == "canonical" || it.fhir_type == "uri");
  }

  void add_date(const fp::item& it) {
    std::string_view type = it.fhir_type;
    const fhir::value* n = it.node;
    if (it.is_node() && n && n->is_object()) {
      if (type == "Period") {
        auto* start = string_member(n, "start");
        auto* end = string_member(n, "end");
        std::optional<date_range> s = start ? fhir_date_range(*start) : std::nullopt;
        std::optional<date_range> e = end ? fhir_date_range(*end) : std::nullopt;
        if ((start && !s) || (end && !e) || (!s && !e)) return;
        rows_.dates.push_back({param_, s ? s->low : "-infinity", e ? e->high : "infinity", group_});
      } else if (type == "Timing") {
        // One row per event (a Timing matches where any of its events does) plus the bounds.
        std::vector<date_range> ranges;
        if (const fhir::value* events = n->find("event"); events && events->is_array())
          for (const auto& e : events->items())
            if (e.is_string())
              if (auto r = fhir_date_range(e.text())) ranges.push_back(*r);
        for (const auto& r : ranges) rows_.dates.push_back({param_, r.low, r.high, group_});
        if (const fhir::value* repeat = n->find("repeat"); repeat && repeat->is_object())
          if (const fhir::value* bounds = repeat->find("boundsPeriod"); bounds && bounds->is_object()) {
            fp::item period;
            period.node = bounds;
            period.fhir_type = "Period";
            add_date(period);
          }
      }
      return;
    }
    if (auto s = primitive_text(it))
      if (auto r = fhir_date_range(*s)) rows_.dates.push_back({param_, r->low, r->high, group_});
  }

  void add_number(const fp::item& it) {
    if (it.is_node() && it.node && it.node->is_number()) {
      rows_.numbers.push_back({param_, it.node->text(), group_});
    } else if (it.kind == fp::item_kind::integer) {
      rows_.numbers.push_back({param_, std::to_string(it.integer_value), group_});
    } else if (it.kind == fp::item_kind::decimal) {
      rows_.numbers.push_back({param_, it.decimal_value.to_string(), group_});
    }
  }

  void add_quantity(const fp::item& it) {
    const fhir::value* n = it.node;
    if (!it.is_node() || !n || !n->is_object()) return;
    if (it.fhir_type == "Range") {
      for (const char* bound : {"low", "high"})
        if (const fhir::value* q = n->find(bound); q && q->is_object()) quantity(*q, false);
      return;
    }
    quantity(*n, it.fhir_type == "Money");
  }

  void add_uri(const fp::item& it) {
    if (auto s = primitive_text(it); s && !s->empty()) rows_.uris.push_back({param_, *s, group_});
  }

  void add(const std::string& type, const fp::item& it) {
    if (type == "string") add_string(it);
    else if (type == "token") add_token(it);
    else if (type == "reference") add_reference(it);
    else if (type == "date") add_date(it);
    else if (type == "number") add_number(it);
    else if (type == "quantity") add_quantity(it);
    else if (type == "uri") add_uri(it);
  }

 private:
  bool add_coding(const fhir::value& coding, const std::string& concept_text) {
    auto* code = string_member(&coding, "code");
    auto* system = string_member(&coding, "system");
    auto* display = string_member(&coding, "display");
    if (!code && !display) return false;
    std::string text = display ? *display : std::string();
    if (!concept_text.empty()) text = text.empty() ? concept_text : concept_text + " " + text;
    token(system ? *system : "", code ? *code : "", text);
    return true;
  }

  void quantity(const fhir::value& q, bool money) {
    const fhir::value* v = q.find("value");
    if (!v || !v->is_number()) return;
    quantity_row row;
    row.param = param_;
    row.group = group_;
    row.value = v->text();
    if (money) {
      row.system = "urn:iso:std:iso:4217";
      if (auto* c = string_member(&q, "currency")) row.code = *c;
    } else {
      if (auto* s = string_member(&q, "system")) row.system = *s;
      if (auto* c = string_member(&q, "code")) row.code = *c;
      else if (auto* u = string_member(&q, "unit")) row.code = *u;
      bool ucum = row.system == "http://unitsofmeasure.org" || row.system.empty();
      if (ucum && !row.code.empty())
        if (auto d = fp::decimal::parse(row.value))
          if (auto c = fp::ucum_canonical(*d, row.code)) {
            row.canonical_value = c->first.to_string();
            row.canonical_code = c->second;
          }
    }
    rows_.quantities.push_back(std::move(row));
  }

  void reference_text(std::string_view ref, bool canonical) {
    if (ref.empty() || ref.front() == '#') return;
    reference_row row;
    row.param = param_;
    row.group = group_;
    std::string_view path = ref;
    if (canonical) {  // url|version; a relative canonical ("Questionnaire/gcs") also gets Type/id below
      auto bar = ref.find('|');
      path = ref.substr(0, bar);
      row.url = std::string(path);
      if (bar != std::string_view::npos) row.version = std::string(ref.substr(bar + 1));
    } else {
      bool absolute = ref.find("://") != std::string_view::npos || ref.starts_with("urn:");
      if (absolute) row.url = std::string(ref);
      if (auto h = path.find("/_history/"); h != std::string_view::npos) {
        row.version = std::string(path.substr(h + 10));
        path = path.substr(0, h);
        if (absolute) row.url = std::string(path);
      }
    }
    // The last two segments, when they look like Type/id.
    auto slash = path.rfind('/');
    if (slash != std::string_view::npos && slash > 0) {
      auto before = path.rfind('/', slash - 1);
      std::string_view type = path.substr(before == std::string_view::npos ? 0 : before + 1,
                                          slash - (before == std::string_view::npos ? 0 : before + 1));
      std::string_view id = path.substr(slash + 1);
      if (!type.empty() && std::isupper(static_cast<unsigned char>(type.front())) && !id.empty() &&
          fhir::definitions::r4().is_resource_type(type)) {
        row.target_type = std::string(type);
        row.target_id = std::string(id);
      }
    }
    if (row.target_id.empty() && row.url.empty()) return;  // neither relative Type/id nor a URL
    rows_.references.push_back(std::move(row));
  }

  index_rows& rows_;
  const std::string& param_;
  int group_;
};

template <typename Row, typename Key>
void deduplicate(std::vector<Row>& rows, Key key) {
  std::sort(rows.begin(), rows.end(), [&](const Row& a, const Row& b) { return key(a) < key(b); });
  rows.erase(std::unique(rows.begin(), rows.end(), [&](const Row& a, const Row& b) { return key(a) == key(b); }),
             rows.end());
}

}  // namespace

std::vector<const fhir::search_param_def*> searchable_params(const fhir::definitions& defs, std::string_view type) {
  std::vector<const fhir::search_param_def*> out;
  for (const char* column : {"_id", "_lastUpdated"})
    if (const auto* def = defs.find_search_param(type, column)) out.push_back(def);
  for (const auto& p : compiled_for(defs).for_type(std::string(type))) out.push_back(p.def);
  return out;
}

index_rows extract_index_rows(const fhir::definitions& defs, const fhir::value& resource) {
  index_rows rows;
  const fhir::value* type_member = resource.find("resourceType");
  if (!type_member || !type_member->is_string()) return rows;
  fp::evaluate_options options;
  options.defs = &defs;
  for (const auto& p : compiled_for(defs).for_type(type_member->text())) {
    try {
      fp::collection items = p.expression.evaluate(resource, options);
      if (p.def->type != "composite") {
        row_builder builder(rows, p.def->code, 0);
        for (const auto& it : items) builder.add(p.def->type, it);
        continue;
      }
      int group = 0;
      for (const auto& it : items) {
        ++group;
        for (std::size_t k = 0; k < p.components.size(); ++k) {
          std::string name = p.def->code + "$" + std::to_string(k);
          row_builder builder(rows, name, group);
          for (const auto& value : p.components[k].expression.evaluate(fp::collection{it}, &resource, options))
            builder.add(p.components[k].type, value);
        }
      }
    } catch (const fp::evaluation_error&) {
      // This resource's data does not fit the expression (e.g. single() on several): not indexed.
    }
  }
  deduplicate(rows.strings, [](const string_row& r) { return std::tie(r.param, r.group, r.exact); });
  deduplicate(rows.tokens, [](const token_row& r) { return std::tie(r.param, r.group, r.system, r.code, r.text_norm); });
  deduplicate(rows.references, [](const reference_row& r) {
    return std::tie(r.param, r.group, r.target_type, r.target_id, r.url, r.version);
  });
  deduplicate(rows.dates, [](const date_row& r) { return std::tie(r.param, r.group, r.low, r.high); });
  deduplicate(rows.numbers, [](const number_row& r) { return std::tie(r.param, r.group, r.value); });
  deduplicate(rows.quantities,
              [](const quantity_row& r) { return std::tie(r.param, r.group, r.value, r.system, r.code); });
  deduplicate(rows.uris, [](const uri_row& r) { return std::tie(r.param, r.group, r.uri); });
  return rows;
}

// ---------------------------------------------------------------------------------------------
// Writing

void search_indexer::in_transaction(pqxx::transaction_base& tx, const write_event& event) {
  in_transaction_batch(tx, std::vector<write_event>{event});
}

void search_indexer::in_transaction_batch(pqxx::transaction_base& tx, const std::vector<write_event>& events) {
  if (events.empty()) return;
  const std::string& tenant = events.front().context->tenant;
  using cols = std::vector<std::pair<std::string, std::string>>;
  // Versions after the first replace their predecessor's rows.
  array_rows replaced("", cols{{"res_type", "text"}, {"res_id", "text"}});
  for (const auto& e : events)
    if (e.resource->version > 1) replaced.add({e.resource->type, e.resource->id});
  if (!replaced.empty()) {
    std::string owners = "(res_type, res_id) IN (SELECT * FROM unnest(" + replaced.unnest_arguments() + "))";
    std::string sql;
    const char* tables[] = {"index_string", "index_token", "index_reference", "index_date",
                            "index_number", "index_quantity", "index_uri"};
    for (std::size_t i = 0; i + 1 < std::size(tables); ++i)
      sql += std::string(i ? ", " : "WITH ") + "d" + std::to_string(i) + " AS (DELETE FROM " + tables[i] +
             " WHERE tenant = $1 AND " + owners + ")";
    sql += " DELETE FROM index_uri WHERE tenant = $1 AND " + owners;
    tx.exec_params(sql, pqxx::prepare::make_dynamic_params(replaced.parameters(tenant)));
  }

  const cols owner{{"res_type", "text"}, {"res_id", "text"}, {"param", "text"}, {"grp", "int"}};
  auto with_owner = [&](cols more) {
    cols all = owner;
    all.insert(all.end(), more.begin(), more.end());
    return all;
  };
  array_rows strings("index_string", with_owner({{"norm", "text"}, {"exact", "text"}}));
  array_rows tokens("index_token", with_owner({{"system", "text"}, {"code", "text"}, {"text_norm", "text"}}));
  array_rows refs("index_reference",
                  with_owner({{"target_type", "text"}, {"target_id", "text"}, {"url", "text"}, {"version", "text"}}));
  array_rows dates("index_date", with_owner({{"low", "timestamptz"}, {"high", "timestamptz"}}));
  array_rows numbers("index_number", with_owner({{"value", "numeric"}}));
  array_rows quantities("index_quantity", with_owner({{"value", "numeric"},
                                                      {"system", "text"},
                                                      {"code", "text"},
                                                      {"canonical_value", "numeric"},
                                                      {"canonical_code", "text"}}));
  array_rows uris("index_uri", with_owner({{"uri", "text"}}));
  auto opt = [](const std::optional<std::string>& v) -> std::optional<std::string_view> {
    return v ? std::optional<std::string_view>(*v) : std::nullopt;
  };
  for (const auto& e : events) {
    if (!e.content || e.resource->deleted) continue;
    const std::string& type = e.resource->type;
    const std::string& id = e.resource->id;
    index_rows rows = extract_index_rows(defs_, *e.content);
    for (const auto& r : rows.strings) strings.add({type, id, r.param, std::to_string(r.group), r.norm, r.exact});
    for (const auto& r : rows.tokens)
      tokens.add({type, id, r.param, std::to_string(r.group), r.system, r.code, r.text_norm});
    for (const auto& r : rows.references)
      refs.add({type, id, r.param, std::to_string(r.group), r.target_type, r.target_id, r.url, r.version});
    for (const auto& r : rows.dates) dates.add({type, id, r.param, std::to_string(r.group), r.low, r.high});
    for (const auto& r : rows.numbers) numbers.add({type, id, r.param, std::to_string(r.group), r.value});
    for (const auto& r : rows.quantities)
      quantities.add({type, id, r.param, std::to_string(r.group), r.value, r.system, r.code, opt(r.canonical_value),
                      opt(r.canonical_code)});
    for (const auto& r : rows.uris) uris.add({type, id, r.param, std::to_string(r.group), r.uri});
  }
  for (const auto* table : {&strings, &tokens, &refs, &dates, &numbers, &quantities, &uris}) table->insert(tx, tenant);
}

std::shared_ptr<write_participant> make_search_indexer() {
  return std::make_shared<search_indexer>();
}

}  // namespace yilian::gateway::detail
