// FHIR search → SQL. Each criterion becomes an EXISTS over one index table correlated with the
// resource row (`tenant, res_type, res_id` lead every index, so each probe is an index lookup and
// the tables stay co-located under Citus). Values only ever travel as bound parameters; table,
// column and parameter names come from the definitions, never from the request.
#include <openssl/evp.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <pqxx/pqxx>
#include <set>

#include "search_index.hpp"
#include "store_internal.hpp"
#include "yilian/fhir/definitions.hpp"
#include "yilian/fhir/fhirpath.hpp"
#include "yilian/gateway/search.hpp"

namespace yilian::gateway {

namespace fp = fhir::fhirpath;

namespace {

[[noreturn]] void invalid(const std::string& message) {
  throw store_error(store_error_kind::invalid_criteria, message);
}

const fhir::definitions& defs() { return fhir::definitions::r4(); }

// Bound parameters of one statement.
struct sql_params {
  std::vector<std::string> values;
  std::string add(std::string v) {
    values.push_back(std::move(v));
    return "$" + std::to_string(values.size());
  }
};

// name[:modifier][.chain] split at the first '.' that follows the first segment.
struct parsed_name {
  std::string code;
  std::string modifier;
  std::string chain;  // rest after '.', e.g. "name:exact" or "organization.name"
};

parsed_name split_name(std::string_view name) {
  parsed_name out;
  auto dot = name.find('.');
  std::string_view head = name.substr(0, dot);
  if (dot != std::string_view::npos) out.chain = std::string(name.substr(dot + 1));
  auto colon = head.find(':');
  out.code = std::string(head.substr(0, colon));
  if (colon != std::string_view::npos) out.modifier = std::string(head.substr(colon + 1));
  return out;
}

std::string like_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '%' || c == '_' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

std::string unescape_value(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) ++i;
    out += s[i];
  }
  return out;
}

// Splits on unescaped `sep`, keeping escapes.
std::vector<std::string> split_unescaped(std::string_view value, char sep) {
  std::vector<std::string> out(1);
  for (std::size_t i = 0; i < value.size(); ++i) {
    if (value[i] == '\\' && i + 1 < value.size()) {
      out.back() += value[i];
      out.back() += value[++i];
    } else if (value[i] == sep) {
      out.emplace_back();
    } else {
      out.back() += value[i];
    }
  }
  return out;
}

// Prefix of number/date/quantity values.
std::pair<std::string, std::string_view> split_prefix(std::string_view v) {
  static const char* const prefixes[] = {"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"};
  if (v.size() >= 2)
    for (const char* p : prefixes)
      if (v.substr(0, 2) == p) return {p, v.substr(2)};
  return {"eq", v};
}

// Implicit range of a decimal from its precision: "100" → [99.5, 100.5).
struct decimal_range {
  std::string value, low, high;
};

decimal_range number_range(std::string_view text, const std::string& param) {
  auto d = fp::decimal::parse(text);
  if (!d) invalid("Invalid number '" + std::string(text) + "' for search parameter '" + param + "'");
  fp::decimal half{5, d->scale + 1};
  auto shift = [&](int sign) {
    fp::decimal a = *d, b = half;
    int scale = std::max(a.scale, b.scale);
    auto widen = [&](fp::decimal x) {
      while (x.scale < scale) {
        x.mantissa *= 10;
        ++x.scale;
      }
      return x;
    };
    a = widen(a);
    b = widen(b);
    return fp::decimal{a.mantissa + sign * b.mantissa, scale}.to_string();
  };
  return {d->to_string(), shift(-1), shift(1)};
}

class sql_builder {
 public:
  sql_builder(sql_params& params, std::string base_url) : p_(params), base_url_(std::move(base_url)) {}

  // Condition on the resource row `alias` (columns tenant, res_type, res_id, last_updated).
  std::string criterion_sql(std::string_view type, const criterion& c, const std::string& alias) {
    if (c.name.starts_with("_has:")) return has_sql(c, alias);
    parsed_name n = split_name(c.name);
    if (n.code == "_id") {
      std::string list;
      for (const auto& id : detail::split_or_list(c.value))
        list += (list.empty() ? "" : ", ") + p_.add(unescape_value(id));
      return n.modifier == "not" ? alias + ".res_id NOT IN (" + list + ")" : alias + ".res_id IN (" + list + ")";
    }
    if (n.code == "_lastUpdated") return last_updated_sql(c, alias);
    const fhir::search_param_def* def = defs().find_search_param(type, n.code);
    if (!def) invalid("Unknown search parameter '" + n.code + "' for " + std::string(type));
    if (!n.chain.empty()) return chain_sql(type, *def, n, c.value, alias);
    if (n.modifier == "missing") {
      if (c.value != "true" && c.value != "false")
        invalid("Search parameter '" + c.name + "' takes true or false, not '" + c.value + "'");
      std::string exists = exists_sql(table_of(def->type), def->code, alias, "true", def->type == "composite");
      return c.value == "true" ? "NOT " + exists : exists;
    }
    if (def->type == "composite") return composite_sql(*def, n, c.value, alias);
    // OR over the comma-separated alternatives, within one EXISTS.
    std::vector<std::string> alternatives;
    for (const auto& alt : detail::split_or_list(c.value)) alternatives.push_back(value_sql(*def, n, alt, "i"));
    std::string any = join(alternatives, " OR ");
    std::string param = def->code;
    if (n.modifier == "identifier") param += ":identifier";
    if (n.modifier == "of-type") param += ":of-type";
    std::string table = n.modifier == "identifier" ? "index_token" : table_of(def->type);
    std::string exists = exists_sql(table, param, alias, any);
    bool negate = n.modifier == "not" || n.modifier == "not-in";
    return negate ? "NOT " + exists : exists;
  }

  // Compartment membership: any of the linking parameters points at Type/id.
  std::string compartment_sql(std::string_view type, const std::string& compartment_type, const std::string& id,
                              const std::string& alias) {
    const auto* params = defs().compartment_params(compartment_type, type);
    if (!params) invalid(std::string(type) + " is not in the " + compartment_type + " compartment");
    std::string list;
    for (const auto& code : *params) list += (list.empty() ? "" : ", ") + p_.add(code);
    std::string sql = "EXISTS (SELECT 1 FROM index_reference i WHERE i.tenant = " + alias + ".tenant AND i.res_type = " +
                      alias + ".res_type AND i.res_id = " + alias + ".res_id AND i.param IN (" + list +
                      ") AND i.target_type = " + p_.add(compartment_type) + " AND i.target_id = " + p_.add(id) + ")";
    if (type == compartment_type) sql = "(" + alias + ".res_id = " + p_.add(id) + " OR " + sql + ")";
    return sql;
  }

 private:
  static std::string join(const std::vector<std::string>& parts, const char* sep) {
    std::string out;
    for (const auto& s : parts) out += (out.empty() ? "(" : std::string(sep) + "(") + s + ")";
    return out.empty() ? "false" : out;
  }

  static std::string table_of(const std::string& param_type) {
    if (param_type == "string") return "index_string";
    if (param_type == "token") return "index_token";
    if (param_type == "reference") return "index_reference";
    if (param_type == "date") return "index_date";
    if (param_type == "number") return "index_number";
    if (param_type == "quantity") return "index_quantity";
    if (param_type == "uri") return "index_uri";
    if (param_type == "composite") return "index_token";  // its first component decides :missing
    invalid("Search parameters of type '" + param_type + "' are not supported");
  }

  std::string exists_sql(const std::string& table, const std::string& param, const std::string& alias,
                         const std::string& condition, bool composite = false) {
    std::string param_sql = composite ? "i.param LIKE " + p_.add(like_escape(param) + "$%")
                                      : "i.param = " + p_.add(param);
    return "EXISTS (SELECT 1 FROM " + table + " i WHERE i.tenant = " + alias + ".tenant AND i.res_type = " + alias +
           ".res_type AND i.res_id = " + alias + ".res_id AND " + param_sql + " AND (" + condition + "))";
  }

  std::string value_sql(const fhir::search_param_def& def, const parsed_name& n, const std::string& raw,
                        const std::string& i) {
    const std::string& m = n.modifier;
    auto unsupported = [&] {
      invalid("Modifier ':" + m + "' is not supported on " + def.type + " parameter '" + def.code + "'");
    };
    if (def.type == "string") {
      if (!m.empty() && m != "exact" && m != "contains" && m != "not") unsupported();
      std::string v = unescape_value(raw);
      if (m == "exact") return i + ".exact = " + p_.add(v);
      if (m == "contains") return i + ".norm LIKE " + p_.add("%" + like_escape(detail::normalise_string(v)) + "%");
      return i + ".norm LIKE " + p_.add(like_escape(detail::normalise_string(v)) + "%");
    }
    if (def.type == "token") return token_sql(def, m, raw, i);
    if (def.type == "reference") return reference_sql(def, m, raw, i);
    if (def.type == "date") {
      if (!m.empty() && m != "not" && m != "missing") unsupported();
      return date_sql(def.code, raw, i + ".low", i + ".high");
    }
    if (def.type == "number") {
      if (!m.empty() && m != "not") unsupported();
      return number_sql(def.code, raw, i + ".value");
    }
    if (def.type == "quantity") {
      if (!m.empty() && m != "not") unsupported();
      return quantity_sql(def.code, raw, i);
    }
    if (def.type == "uri") {
      std::string v = unescape_value(raw);
      if (m.empty() || m == "not") return i + ".uri = " + p_.add(v);
      if (m == "below") return i + ".uri LIKE " + p_.add(like_escape(v) + "%");
      if (m == "above") return "starts_with(" + p_.add(v) + ", " + i + ".uri)";
      unsupported();
    }
    invalid("Search parameters of type '" + def.type + "' are not supported ('" + def.code + "')");
  }

  std::string token_sql(const fhir::search_param_def& def, const std::string& m, const std::string& raw,
                        const std::string& i) {
    if (m == "text") return i + ".text_norm LIKE " + p_.add(like_escape(detail::normalise_string(unescape_value(raw))) + "%");
    if (m == "in" || m == "not-in") {
      const auto* codes = defs().value_set_codes(unescape_value(raw));
      if (!codes)
        invalid("Value set '" + raw + "' of '" + def.code + ":" + m +
                "' cannot be expanded here (only value sets defined in FHIR R4 with enumerable codes)");
      std::string list;
      for (const auto& sc : *codes) list += (list.empty() ? "" : ", ") + p_.add(sc);
      if (list.empty()) return "false";
      return "(" + i + ".system || '|' || " + i + ".code) IN (" + list + ")";
    }
    if (m == "of-type") {
      auto parts = split_unescaped(raw, '|');
      if (parts.size() != 3)
        invalid("'" + def.code + ":of-type' takes system|code|value, not '" + raw + "'");
      return i + ".system = " + p_.add(unescape_value(parts[0])) + " AND " + i + ".code = " +
             p_.add(unescape_value(parts[1]) + "|" + unescape_value(parts[2]));
    }
    if (!m.empty() && m != "not" && m != "identifier")
      invalid("Modifier ':" + m + "' is not supported on token parameter '" + def.code +
              "' (hierarchies need a terminology service)");
    auto alts = detail::parse_token(raw);
    if (alts.size() != 1) invalid("Invalid token value '" + raw + "' for '" + def.code + "'");
    const auto& t = alts[0];
    if (!t.has_system) return i + ".code = " + p_.add(t.code);
    if (t.code.empty()) return i + ".system = " + p_.add(t.system);
    return i + ".code = " + p_.add(t.code) + " AND " + i + ".system = " + p_.add(t.system);
  }

  std::string reference_sql(const fhir::search_param_def& def, const std::string& m, const std::string& raw,
                            const std::string& i) {
    if (m == "identifier") {
      fhir::search_param_def token = def;
      token.type = "token";
      return token_sql(token, "", raw, i);
    }
    std::string v = unescape_value(raw);
    if (v.empty()) invalid("Empty reference value for '" + def.code + "'");
    std::string type_filter;
    if (!m.empty() && m != "not") {
      if (!defs().is_resource_type(m)) invalid("Modifier ':" + m + "' is not supported on reference parameter '" + def.code + "'");
      type_filter = m;
    }
    if (!base_url_.empty() && v.starts_with(base_url_ + "/")) v = v.substr(base_url_.size() + 1);
    bool absolute = v.find("://") != std::string::npos || v.starts_with("urn:");
    if (absolute) {
      auto bar = v.find('|');
      std::string url = v.substr(0, bar);
      std::string sql = i + ".url = " + p_.add(url);
      if (bar != std::string::npos) sql += " AND " + i + ".version = " + p_.add(v.substr(bar + 1));
      return sql;
    }
    auto slash = v.find('/');
    std::string type = type_filter, id = v;
    if (slash != std::string::npos) {
      type = v.substr(0, slash);
      id = v.substr(slash + 1);
      if (auto h = id.find("/_history/"); h != std::string::npos) id = id.substr(0, h);
      if (!defs().is_resource_type(type)) invalid("Invalid reference '" + v + "' for '" + def.code + "'");
      if (!type_filter.empty() && type_filter != type)
        invalid("Reference '" + v + "' contradicts the modifier ':" + type_filter + "'");
    }
    std::string sql = i + ".target_id = " + p_.add(id);
    if (!type.empty()) sql += " AND " + i + ".target_type = " + p_.add(type);
    return sql;
  }

  std::string date_sql(const std::string& code, std::string_view raw, const std::string& low, const std::string& high) {
    auto [prefix, text] = split_prefix(raw);
    auto range = detail::fhir_date_range(text);
    if (!range) invalid("Invalid date '" + std::string(text) + "' for search parameter '" + code + "'");
    // Only the bounds a prefix uses become parameters (an unused one has no type for PostgreSQL).
    auto sl = [&] { return p_.add(range->low) + "::timestamptz"; };
    auto sh = [&] { return p_.add(range->high) + "::timestamptz"; };
    if (prefix == "eq") return low + " >= " + sl() + " AND " + high + " <= " + sh();
    if (prefix == "ne") return "NOT (" + low + " >= " + sl() + " AND " + high + " <= " + sh() + ")";
    if (prefix == "gt") return high + " > " + sh();
    if (prefix == "lt") return low + " < " + sl();
    if (prefix == "ge") return high + " > " + sl();
    if (prefix == "le") return low + " < " + sh();
    if (prefix == "sa") return low + " >= " + sh();
    if (prefix == "eb") return high + " <= " + sl();
    // ap: overlap with the value widened by 10% of its distance from now (at least a day).
    std::string start = sl(), end = sh();
    std::string gap = "greatest(interval '1 day', abs(extract(epoch from now() - " + start + ")) * interval '0.1 second')";
    return low + " < " + end + " + " + gap + " AND " + high + " > " + start + " - " + gap;
  }

  std::string number_sql(const std::string& code, std::string_view raw, const std::string& column) {
    auto [prefix, text] = split_prefix(raw);
    decimal_range r = number_range(text, code);
    return number_condition(prefix, r, column);
  }

  std::string number_condition(const std::string& prefix, const decimal_range& r, const std::string& column) {
    if (prefix == "eq") return column + " >= " + p_.add(r.low) + "::numeric AND " + column + " < " + p_.add(r.high) + "::numeric";
    if (prefix == "ne") return "NOT (" + column + " >= " + p_.add(r.low) + "::numeric AND " + column + " < " + p_.add(r.high) + "::numeric)";
    std::string v = p_.add(r.value) + "::numeric";
    if (prefix == "gt" || prefix == "sa") return column + " > " + v;
    if (prefix == "lt" || prefix == "eb") return column + " < " + v;
    if (prefix == "ge") return column + " >= " + v;
    if (prefix == "le") return column + " <= " + v;
    return column + " BETWEEN " + v + " - abs(" + v + ") * 0.1 AND " + v + " + abs(" + v + ") * 0.1";  // ap: 10%
  }

  std::string quantity_sql(const std::string& code, std::string_view raw, const std::string& i) {
    auto parts = split_unescaped(raw, '|');
    if (parts.size() != 1 && parts.size() != 3)
      invalid("Invalid quantity '" + std::string(raw) + "' for '" + code + "': expected [prefix]number|system|code");
    auto [prefix, number] = split_prefix(parts[0]);
    decimal_range r = number_range(number, code);
    if (parts.size() == 1) return number_condition(prefix, r, i + ".value");
    std::string system = unescape_value(parts[1]), unit = unescape_value(parts[2]);
    bool ucum = system.empty() || system == "http://unitsofmeasure.org";
    if (ucum && !unit.empty()) {
      auto to_canonical = [&](const std::string& text) -> std::optional<std::pair<std::string, std::string>> {
        auto d = fp::decimal::parse(text);
        if (!d) return std::nullopt;
        auto c = fp::ucum_canonical(*d, unit);
        if (!c) return std::nullopt;
        return std::make_pair(c->first.to_string(), c->second);
      };
      auto value = to_canonical(r.value), low = to_canonical(r.low), high = to_canonical(r.high);
      if (value && low && high) {
        decimal_range canonical{value->first, low->first, high->first};
        return i + ".canonical_code = " + p_.add(value->second) + " AND " +
               number_condition(prefix, canonical, i + ".canonical_value");
      }
    }
    std::string sql = number_condition(prefix, r, i + ".value");
    if (!unit.empty()) sql += " AND " + i + ".code = " + p_.add(unit);
    if (!system.empty()) sql += " AND " + i + ".system = " + p_.add(system);
    return sql;
  }

  std::string last_updated_sql(const criterion& c, const std::string& alias) {
    std::vector<std::string> alternatives;
    for (const auto& alt : detail::split_or_list(c.value))
      alternatives.push_back(date_sql("_lastUpdated", alt, alias + ".last_updated",
                                      alias + ".last_updated + interval '1 millisecond'"));
    return join(alternatives, " OR ");
  }

  // code$value: each component matched on rows of the same composite item (grp).
  std::string composite_sql(const fhir::search_param_def& def, const parsed_name& n, const std::string& value,
                            const std::string& alias) {
    if (!n.modifier.empty()) invalid("Modifier ':" + n.modifier + "' is not supported on composite '" + def.code + "'");
    std::vector<std::string> alternatives;
    for (const auto& alt : detail::split_or_list(value)) {
      auto parts = split_unescaped(alt, '$');
      if (parts.size() != def.components.size())
        invalid("Composite parameter '" + def.code + "' takes " + std::to_string(def.components.size()) +
                " values separated by '$', not '" + alt + "'");
      std::string sql;
      std::string first_alias;
      for (std::size_t k = parts.size(); k-- > 0;) {
        const fhir::search_param_def* component = nullptr;
        for (const auto& candidate : defs().all_search_params())
          if (candidate.url == def.components[k].definition) component = &candidate;
        if (!component) invalid("Composite parameter '" + def.code + "' has an unknown component");
        std::string a = "k" + std::to_string(k) + "_" + std::to_string(depth_);
        std::string cond = value_sql(*component, parsed_name{}, parts[k], a);
        std::string where = a + ".tenant = " + alias + ".tenant AND " + a + ".res_type = " + alias + ".res_type AND " + a +
                            ".res_id = " + alias + ".res_id AND " + a + ".param = " +
                            p_.add(def.code + "$" + std::to_string(k)) + " AND (" + cond + ")";
        if (k > 0) where += " AND " + a + ".grp = k0_" + std::to_string(depth_) + ".grp";
        sql = "EXISTS (SELECT 1 FROM " + table_of(component->type) + " " + a + " WHERE " + where +
              (sql.empty() ? "" : " AND " + sql) + ")";
      }
      alternatives.push_back(sql);
    }
    ++depth_;
    return join(alternatives, " OR ");
  }

  // subject:Patient.name=x / subject.name=x: a reference whose target matches the rest.
  std::string chain_sql(std::string_view type, const fhir::search_param_def& def, const parsed_name& n,
                        const std::string& value, const std::string& alias) {
    if (def.type != "reference")
      invalid("Chained search needs a reference parameter; '" + def.code + "' of " + std::string(type) + " is a " +
              def.type);
    if (++depth_ > 4) invalid("Chains deeper than 4 levels are not supported");
    std::vector<std::string> targets;
    if (!n.modifier.empty()) {
      if (!defs().is_resource_type(n.modifier)) invalid("Invalid chain type ':" + n.modifier + "' on '" + def.code + "'");
      targets.push_back(n.modifier);
    } else {
      targets = def.target;
    }
    std::string inner_code = split_name(n.chain).code;
    std::vector<std::string> per_type;
    for (const auto& target : targets) {
      if (inner_code != "_id" && inner_code != "_lastUpdated" && !inner_code.starts_with("_has") &&
          !defs().find_search_param(target, inner_code))
        continue;
      std::string a = "t" + std::to_string(depth_);
      std::string cond = criterion_sql(target, criterion{n.chain, value}, a);
      per_type.push_back("i.target_type = " + p_.add(target) + " AND EXISTS (SELECT 1 FROM resource_current " + a +
                         " WHERE " + a + ".tenant = i.tenant AND " + a + ".res_type = i.target_type AND " + a +
                         ".res_id = i.target_id AND NOT " + a + ".deleted AND " + cond + ")");
    }
    if (per_type.empty())
      invalid("No target type of '" + def.code + "' has a search parameter '" + inner_code + "'");
    return exists_sql("index_reference", def.code, alias, join(per_type, " OR "));
  }

  // _has:Observation:patient:code=1234 — resources that an Observation matching code=1234 refers
  // to through its `patient` parameter.
  std::string has_sql(const criterion& c, const std::string& alias) {
    std::string_view rest = std::string_view(c.name).substr(5);
    auto first = rest.find(':');
    auto second = first == std::string_view::npos ? first : rest.find(':', first + 1);
    if (second == std::string_view::npos)
      invalid("Invalid _has parameter '" + c.name + "': expected _has:Type:reference:parameter");
    std::string source(rest.substr(0, first)), ref(rest.substr(first + 1, second - first - 1));
    std::string inner(rest.substr(second + 1));
    if (!defs().is_resource_type(source)) invalid("Unknown resource type '" + source + "' in '" + c.name + "'");
    const auto* ref_def = defs().find_search_param(source, ref);
    if (!ref_def || ref_def->type != "reference")
      invalid("'" + ref + "' is not a reference parameter of " + source + " (in '" + c.name + "')");
    if (++depth_ > 4) invalid("_has nested deeper than 4 levels is not supported");
    std::string r = "hr" + std::to_string(depth_);
    // Index rows exist only for current, non-deleted versions, so the referring resource's own
    // row is needed only when the inner criterion reads its columns (_lastUpdated).
    bool needs_row = split_name(inner).code == "_lastUpdated";
    std::string a = needs_row ? "h" + std::to_string(depth_) : r;
    std::string cond = criterion_sql(source, criterion{inner, c.value}, a);
    std::string join = needs_row ? " JOIN resource_current " + a + " ON " + a + ".tenant = " + r + ".tenant AND " + a +
                                       ".res_type = " + r + ".res_type AND " + a + ".res_id = " + r + ".res_id AND NOT " +
                                       a + ".deleted"
                                 : "";
    return "EXISTS (SELECT 1 FROM index_reference " + r + join + " WHERE " + r + ".tenant = " + alias + ".tenant AND " +
           r + ".target_type = " + alias + ".res_type AND " + r + ".target_id = " + alias + ".res_id AND " + r +
           ".res_type = " + p_.add(source) + " AND " + r + ".param = " + p_.add(ref) + " AND " + cond + ")";
  }

  sql_params& p_;
  std::string base_url_;
  int depth_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Sorting and keyset cursors

struct sort_column {
  std::string expression;  // SQL over `c`
  std::string cast;        // "::timestamptz", "::numeric", "" (text)
  bool descending = false;
};

sort_column sort_column_for(std::string_view type, const sort_key& key, sql_params& p) {
  if (key.param == "_id") return {"c.res_id", "", key.descending};
  if (key.param == "_lastUpdated") return {"c.last_updated", "::timestamptz", key.descending};
  const auto* def = defs().find_search_param(type, key.param);
  if (!def) invalid("Unknown _sort parameter '" + key.param + "' for " + std::string(type));
  std::string agg = key.descending ? "max" : "min";
  std::string owner = " WHERE i.tenant = c.tenant AND i.res_type = c.res_type AND i.res_id = c.res_id AND i.param = " +
                      p.add(def->code) + ")";
  if (def->type == "date")
    return {"(SELECT " + agg + "(i." + (key.descending ? "high" : "low") + ") FROM index_date i" + owner,
            "::timestamptz", key.descending};
  if (def->type == "string") return {"(SELECT " + agg + "(i.norm) FROM index_string i" + owner, "", key.descending};
  if (def->type == "number") return {"(SELECT " + agg + "(i.value) FROM index_number i" + owner, "::numeric", key.descending};
  if (def->type == "quantity")
    return {"(SELECT " + agg + "(coalesce(i.canonical_value, i.value)) FROM index_quantity i" + owner, "::numeric",
            key.descending};
  if (def->type == "token") return {"(SELECT " + agg + "(i.code) FROM index_token i" + owner, "", key.descending};
  if (def->type == "uri") return {"(SELECT " + agg + "(i.uri) FROM index_uri i" + owner, "", key.descending};
  if (def->type == "reference")
    return {"(SELECT " + agg + "(i.target_type || '/' || i.target_id) FROM index_reference i" + owner, "",
            key.descending};
  invalid("_sort on '" + key.param + "' (a " + def->type + " parameter) is not supported");
}

std::string base64url(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()), static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  for (char& ch : out) ch = ch == '+' ? '-' : ch == '/' ? '_' : ch;
  while (!out.empty() && out.back() == '=') out.pop_back();
  return out;
}

std::optional<std::string> unbase64url(std::string_view text) {
  std::string in(text);
  for (char& ch : in) ch = ch == '-' ? '+' : ch == '_' ? '/' : ch;
  std::size_t padding = (4 - in.size() % 4) % 4;
  if (padding == 3) return std::nullopt;
  in.append(padding, '=');
  std::string out(3 * in.size() / 4 + 1, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()), static_cast<int>(in.size()));
  if (n < 0) return std::nullopt;
  out.resize(static_cast<std::size_t>(n) - padding);
  return out;
}

// Cursor = direction ('n': the rows after this position, 'p': the rows before it), then the
// row's sort values and id; "\x01" marks NULL, fields are separated by \x1f.
struct cursor_position {
  bool backward = false;
  std::vector<std::optional<std::string>> values;  // sort keys, then res_id
};

std::string encode_cursor(bool backward, const std::vector<std::optional<std::string>>& keys, const std::string& id) {
  std::string raw(1, backward ? 'p' : 'n');
  for (const auto& k : keys) raw += (k ? *k : std::string("\x01")) + '\x1f';
  return base64url(raw + id);
}

cursor_position decode_cursor(const std::string& cursor, std::size_t keys) {
  auto raw = unbase64url(cursor);
  if (!raw || raw->empty() || ((*raw)[0] != 'n' && (*raw)[0] != 'p')) invalid("Invalid paging cursor");
  cursor_position out;
  out.backward = (*raw)[0] == 'p';
  std::size_t start = 1;
  for (std::size_t k = 0; k <= keys; ++k) {
    auto end = k == keys ? raw->size() : raw->find('\x1f', start);
    if (end == std::string::npos) invalid("Invalid paging cursor");
    std::string field = raw->substr(start, end - start);
    out.values.push_back(field == "\x01" ? std::nullopt : std::optional<std::string>(field));
    start = end + 1;
  }
  return out;
}

// Rows strictly after (or before) the cursor in ORDER BY k1.., res_id, NULLs last in both
// directions: the lexicographic comparison spelled out key by key.
std::string beyond_cursor_sql(const std::vector<sort_column>& columns, const cursor_position& at, sql_params& p) {
  std::vector<std::string> disjuncts;
  std::string equal_prefix;
  for (std::size_t k = 0; k <= columns.size(); ++k) {
    bool is_id = k == columns.size();
    std::string col = is_id ? "s.res_id" : "s.k" + std::to_string(k);
    std::string cast = is_id ? "" : columns[k].cast;
    const auto& v = at.values[k];
    bool ascending = is_id || !columns[k].descending;
    std::string beyond;
    if (!at.backward) {
      if (!v) beyond = "false";  // nothing sorts after NULL but the following keys
      else beyond = "(" + col + (ascending ? " > " : " < ") + p.add(*v) + cast + (is_id ? "" : " OR " + col + " IS NULL") + ")";
    } else {
      if (!v) beyond = col + " IS NOT NULL";  // every value sorts before NULL
      else beyond = col + (ascending ? " < " : " > ") + p.add(*v) + cast;
    }
    disjuncts.push_back(equal_prefix + beyond);
    if (!is_id) equal_prefix += (v ? col + " = " + p.add(*v) + cast : col + " IS NULL") + " AND ";
  }
  std::string out;
  for (const auto& d : disjuncts) out += (out.empty() ? "(" : " OR (") + d + ")";
  return "(" + out + ")";
}

stored_resource row_to_resource(const pqxx::row& row, pqxx::row::size_type offset) {
  stored_resource s;
  s.type = std::string(row[offset].c_str(), row[offset].size());
  s.id = std::string(row[offset + 1].c_str(), row[offset + 1].size());
  s.version = row[offset + 2].as<std::int64_t>();
  s.last_updated = std::string(row[offset + 3].c_str(), row[offset + 3].size());
  s.json = std::string(row[offset + 4].c_str(), row[offset + 4].size());
  return s;
}

const char* const resource_columns =
    "c.res_type, c.res_id, c.version, to_char(c.last_updated AT TIME ZONE 'UTC', "
    "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"+00:00\"'), c.body";

struct built_query {
  sql_params params;
  std::size_t filter_params = 0;  // how many of params the WHERE clause uses (the rest: sort keys)
  std::string where;  // over resource_current c
  std::vector<sort_column> sort;
};

built_query build(const request_context& ctx, std::string_view type, const search_query& q) {
  built_query b;
  b.where = "c.tenant = " + b.params.add(ctx.tenant) + " AND c.res_type = " + b.params.add(std::string(type)) +
            " AND NOT c.deleted";
  sql_builder builder(b.params, q.base_url);
  for (const auto& c : q.criteria) b.where += " AND " + builder.criterion_sql(type, c, "c");
  if (!q.compartment_type.empty())
    b.where += " AND " + builder.compartment_sql(type, q.compartment_type, q.compartment_id, "c");
  b.filter_params = b.params.values.size();
  for (const auto& key : q.sort) b.sort.push_back(sort_column_for(type, key, b.params));
  return b;
}

// The page statement: matches beyond the cursor in sort order (reversed when paging backward),
// one more than asked (is there a page further on?).
std::string page_sql(built_query& b, const search_query& q) {
  std::string keys;
  for (std::size_t k = 0; k < b.sort.size(); ++k) keys += ", " + b.sort[k].expression + " AS k" + std::to_string(k);
  std::string sql = "SELECT s.* FROM (SELECT " + std::string(resource_columns) + keys +
                    " FROM resource_current c WHERE " + b.where + ") s";
  bool backward = false;
  if (!q.cursor.empty()) {
    cursor_position at = decode_cursor(q.cursor, b.sort.size());
    backward = at.backward;
    sql += " WHERE " + beyond_cursor_sql(b.sort, at, b.params);
  }
  std::string order;
  for (std::size_t k = 0; k < b.sort.size(); ++k) {
    bool descending = b.sort[k].descending != backward;
    order += "s.k" + std::to_string(k) + (descending ? " DESC" : " ASC") + (backward ? " NULLS FIRST, " : " NULLS LAST, ");
  }
  sql += " ORDER BY " + order + (backward ? "s.res_id DESC" : "s.res_id") + " LIMIT " +
         b.params.add(std::to_string(q.count + 1));
  return sql;
}

std::string id_array(const std::vector<const stored_resource*>& resources) {
  std::string out = "{";
  for (const auto* r : resources) {
    if (out.size() > 1) out += ',';
    out += '"';
    for (char ch : r->id) {
      if (ch == '"' || ch == '\\') out += '\\';
      out += ch;
    }
    out += '"';
  }
  return out + "}";
}

// _include / _revinclude for `from` (matches, then what :iterate adds), at most `limit` resources.
void add_includes(pqxx::transaction_base& tx, const request_context& ctx, const search_query& q,
                  const std::vector<stored_resource>& matches, std::vector<stored_resource>& included) {
  constexpr std::size_t limit = 1000;
  std::set<std::pair<std::string, std::string>> seen;
  for (const auto& m : matches) seen.insert({m.type, m.id});
  std::vector<const stored_resource*> frontier;
  for (const auto& m : matches) frontier.push_back(&m);
  for (int round = 0; round < 4 && !frontier.empty() && included.size() < limit; ++round) {
    std::vector<stored_resource> found;
    std::set<std::string> types;
    for (const auto* r : frontier) types.insert(r->type);
    for (const auto& type : types) {
      std::vector<const stored_resource*> of_type;
      for (const auto* r : frontier)
        if (r->type == type) of_type.push_back(r);
      std::string ids = id_array(of_type);
      for (const auto& inc : q.includes) {
        if (round > 0 && !inc.iterate) continue;
        if (inc.source_type != "*" && inc.source_type != type) continue;
        std::string sql = "SELECT " + std::string(resource_columns) +
                          " FROM resource_current c WHERE (c.tenant, c.res_type, c.res_id) IN (SELECT DISTINCT "
                          "i.tenant, i.target_type, i.target_id FROM index_reference i WHERE i.tenant = $1 AND "
                          "i.res_type = $2 AND i.res_id = ANY($3::text[]) AND i.target_id <> ''";
        std::vector<std::string> params{ctx.tenant, type, ids};
        if (inc.param != "*") {
          params.push_back(inc.param);
          sql += " AND i.param = $" + std::to_string(params.size());
        }
        if (!inc.target_type.empty()) {
          params.push_back(inc.target_type);
          sql += " AND i.target_type = $" + std::to_string(params.size());
        }
        sql += ") AND NOT c.deleted";
        for (const auto& row : tx.exec_params(sql, pqxx::prepare::make_dynamic_params(params)))
          found.push_back(row_to_resource(row, 0));
      }
      for (const auto& rev : q.revincludes) {
        if (round > 0 && !rev.iterate) continue;
        std::string sql = "SELECT " + std::string(resource_columns) +
                          " FROM resource_current c WHERE (c.tenant, c.res_type, c.res_id) IN (SELECT i.tenant, "
                          "i.res_type, i.res_id FROM index_reference i WHERE i.tenant = $1 AND i.target_type = $2 "
                          "AND i.target_id = ANY($3::text[])";
        std::vector<std::string> params{ctx.tenant, type, ids};
        if (rev.source_type != "*") {
          params.push_back(rev.source_type);
          sql += " AND i.res_type = $" + std::to_string(params.size());
        }
        if (rev.param != "*") {
          params.push_back(rev.param);
          sql += " AND i.param = $" + std::to_string(params.size());
        }
        sql += ") AND NOT c.deleted LIMIT " + std::to_string(limit + 1);
        for (const auto& row : tx.exec_params(sql, pqxx::prepare::make_dynamic_params(params)))
          found.push_back(row_to_resource(row, 0));
      }
    }
    std::size_t before = included.size();
    for (auto& r : found) {
      if (included.size() >= limit) break;
      if (seen.insert({r.type, r.id}).second) included.push_back(std::move(r));
    }
    frontier.clear();
    for (std::size_t k = before; k < included.size(); ++k) frontier.push_back(&included[k]);
  }
}

}  // namespace

std::vector<std::string> unknown_criteria(std::string_view type, const std::vector<criterion>& criteria) {
  std::vector<std::string> out;
  for (const auto& c : criteria) {
    if (c.name.starts_with("_has:")) continue;
    std::string code = split_name(c.name).code;
    if (code == "_id" || code == "_lastUpdated") continue;
    auto searchable = detail::searchable_params(defs(), type);
    if (std::none_of(searchable.begin(), searchable.end(), [&](const auto* d) { return d->code == code; }))
      out.push_back(c.name);
  }
  return out;
}

namespace detail {
std::string criteria_condition(const request_context&, std::string_view type, const std::vector<criterion>& criteria,
                               std::vector<std::string>& params, const std::string& alias) {
  sql_params p;
  p.values = std::move(params);
  sql_builder builder(p, {});
  std::string sql;
  for (const auto& c : criteria) sql += " AND " + builder.criterion_sql(type, c, alias);
  params = std::move(p.values);
  return sql;
}
}  // namespace detail

search_result run_search(resource_store& store, const request_context& ctx, std::string_view type,
                         const search_query& q) {
  built_query b = build(ctx, type, q);
  std::vector<std::string> count_params(b.params.values.begin(),
                                        b.params.values.begin() + static_cast<std::ptrdiff_t>(b.filter_params));
  std::string sql = page_sql(b, q);
  search_result result;
  store.read_with(ctx, [&](pqxx::transaction_base& tx) {
  if (q.count > 0) {
    auto rows = tx.exec_params(sql, pqxx::prepare::make_dynamic_params(b.params.values));
    bool backward = !q.cursor.empty() && decode_cursor(q.cursor, b.sort.size()).backward;
    bool more_beyond = rows.size() > q.count;  // in the direction of this page
    std::vector<std::vector<std::optional<std::string>>> keys;
    for (std::size_t r = 0; r < rows.size() && r < q.count; ++r) {
      result.matches.push_back(row_to_resource(rows[r], 0));
      auto& row_keys = keys.emplace_back();
      for (std::size_t k = 0; k < b.sort.size(); ++k) {
        const auto& f = rows[r][static_cast<pqxx::row::size_type>(5 + k)];
        row_keys.push_back(f.is_null() ? std::nullopt : std::optional<std::string>(std::string(f.c_str(), f.size())));
      }
    }
    if (backward) {
      std::reverse(result.matches.begin(), result.matches.end());
      std::reverse(keys.begin(), keys.end());
    }
    if (!result.matches.empty()) {
      if (backward ? true : more_beyond) result.next_cursor = encode_cursor(false, keys.back(), result.matches.back().id);
      if (backward ? more_beyond : !q.cursor.empty())
        result.prev_cursor = encode_cursor(true, keys.front(), result.matches.front().id);
    }
  }
  if (q.total == total_mode::automatic && q.cursor.empty() && result.next_cursor.empty() && q.count > 0) {
    result.total = static_cast<std::int64_t>(result.matches.size());
  } else if (q.total == total_mode::accurate || q.count == 0) {
    result.total = tx.exec_params("SELECT count(*) FROM resource_current c WHERE " + b.where,
                                  pqxx::prepare::make_dynamic_params(count_params))[0][0]
                       .as<std::int64_t>();
  } else if (q.total == total_mode::estimate) {
    auto plan = tx.exec_params("EXPLAIN SELECT 1 FROM resource_current c WHERE " + b.where,
                               pqxx::prepare::make_dynamic_params(count_params));
    std::string line = plan[0][0].c_str();
    auto at = line.find("rows=");
    if (at != std::string::npos) result.total = std::strtoll(line.c_str() + at + 5, nullptr, 10);
  }
  if (!q.includes.empty() || !q.revincludes.empty()) add_includes(tx, ctx, q, result.matches, result.included);
  });
  return result;
}

std::string explain_search(resource_store& store, const request_context& ctx, std::string_view type,
                           const search_query& q) {
  built_query b = build(ctx, type, q);
  std::string sql = page_sql(b, q);
  auto lease = store.acquire();
  pqxx::read_transaction tx(*lease);
  std::string out;
  for (const auto& row : tx.exec_params("EXPLAIN (ANALYZE, BUFFERS) " + sql, pqxx::prepare::make_dynamic_params(b.params.values)))
    out += std::string(row[0].c_str()) + "\n";
  return out;
}

}  // namespace yilian::gateway
