// Search reference test: every valid official R4 example is stored with PUT; then, for each
// resource type and each of its token, string, reference, date and uri search parameters, values
// drawn from the stored data are searched through the REST API and the returned ids are compared
// with the ids found by evaluating the parameter's official FHIRPath expression over the same
// resources and applying the FHIR match rule here. Expectations come only from the definitions,
// the FHIRPath engine and the FHIR search rules, never from the index tables or the engine.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <climits>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "test_database.hpp"
#include "test_support.hpp"
#include "yilian/fhir/definitions.hpp"
#include "yilian/fhir/fhirpath.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/resource_store.hpp"

using namespace yilian;
namespace fp = fhir::fhirpath;

namespace {

constexpr std::size_t values_per_param = 4;

struct stored_resource {
  std::string id;
  fhir::value body;
};

std::string url_encode(std::string_view s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

const std::string* text_member(const fhir::value& v, std::string_view name) {
  const fhir::value* m = v.find(name);
  return m && (m->is_string() || m->is_number() || m->is_boolean()) ? &m->text() : nullptr;
}

// ---- token: (system or "" when absent, code) pairs an element offers.
struct token {
  std::optional<std::string> system;
  std::string code;
};

void add_coding(const fhir::value& coding, std::vector<token>& out) {
  const std::string* code = text_member(coding, "code");
  if (!code) return;
  const std::string* system = text_member(coding, "system");
  out.push_back({system ? std::optional<std::string>(*system) : std::optional<std::string>(""), *code});
}

// False when the element is of a kind this test does not model (the parameter is then skipped).
bool tokens_of(const fp::item& it, std::vector<token>& out) {
  if (!it.is_node() || !it.node) return it.is_node();  // primitive with only extensions: nothing
  std::string_view t = it.fhir_type;
  const fhir::value& n = *it.node;
  if (t == "Coding") {
    add_coding(n, out);
  } else if (t == "CodeableConcept") {
    if (const fhir::value* codings = n.find("coding"))
      for (const auto& c : codings->items()) add_coding(c, out);
  } else if (t == "Identifier") {
    const std::string* value = text_member(n, "value");
    if (value) {
      const std::string* system = text_member(n, "system");
      out.push_back({system ? std::optional<std::string>(*system) : std::optional<std::string>(""), *value});
    }
  } else if (t == "ContactPoint") {
    // The ContactPoint's system is a code ("phone"), not a URI: only the value form is checked.
    if (const std::string* value = text_member(n, "value")) out.push_back({std::nullopt, *value});
  } else if (t == "code" || t == "string" || t == "id" || t == "uri" || t == "boolean" || t == "canonical" ||
             t == "url" || t == "oid" || t == "uuid") {
    // A bare primitive has no system of its own (a code's system is implied by its binding).
    out.push_back({std::nullopt, n.text()});
  } else {
    return false;
  }
  return true;
}

// ---- string: the texts a string search looks at.
bool strings_of(const fp::item& it, std::vector<std::string>& out) {
  if (!it.is_node() || !it.node) return it.is_node();
  std::string_view t = it.fhir_type;
  const fhir::value& n = *it.node;
  auto add_parts = [&](std::initializer_list<const char*> names) {
    for (const char* name : names) {
      const fhir::value* m = n.find(name);
      if (!m) continue;
      if (m->is_array()) {
        for (const auto& e : m->items())
          if (e.is_string()) out.push_back(e.text());
      } else if (m->is_string()) {
        out.push_back(m->text());
      }
    }
  };
  if (t == "string" || t == "markdown") {
    out.push_back(n.text());
  } else if (t == "HumanName") {
    add_parts({"family", "given", "prefix", "suffix", "text"});
  } else if (t == "Address") {
    add_parts({"line", "city", "district", "state", "postalCode", "country", "text"});
  } else {
    return false;
  }
  return true;
}

std::string ascii_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// The leading run of ASCII letters and digits of `s`, lower-cased, at most 5 characters.
std::string search_prefix(std::string_view s) {
  std::string p;
  for (char c : s) {
    if (p.size() == 5 || !std::isalnum(static_cast<unsigned char>(c)) || (c & 0x80)) break;
    p += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return p;
}

enum class string_match { yes, no, unsure };

// FHIR string search: case- and accent-insensitive prefix match. A text that does not match by
// ASCII case folding but has a non-ASCII character or punctuation where the prefix would lie could
// still match after the server's accent and punctuation normalisation: that is "unsure".
string_match match_string(std::string_view text, std::string_view prefix) {
  if (ascii_lower(text.substr(0, prefix.size())) == prefix) return string_match::yes;
  for (std::size_t i = 0; i < text.size() && i < prefix.size() * 4 + 4; ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if ((c & 0x80) || !std::isalnum(c)) return string_match::unsure;
  }
  return string_match::no;
}

// ---- reference: relative "Type/id" references.
bool references_of(const fp::item& it, std::vector<std::string>& out) {
  if (!it.is_node() || !it.node) return it.is_node();
  if (it.fhir_type != "Reference") return it.fhir_type == "canonical" || it.fhir_type == "uri";
  if (const std::string* ref = text_member(*it.node, "reference")) {
    // "Patient/1/_history/2" still refers to Patient/1, which a search on Patient/1 finds.
    auto history = ref->find("/_history/");
    out.push_back(history == std::string::npos ? *ref : ref->substr(0, history));
  }
  return true;
}

bool is_relative_reference(std::string_view r) {
  auto slash = r.find('/');
  return slash != std::string_view::npos && slash > 0 && r.find('/', slash + 1) == std::string_view::npos &&
         std::isupper(static_cast<unsigned char>(r[0])) && r.find(':') == std::string_view::npos &&
         r.find('#') == std::string_view::npos && r.find('?') == std::string_view::npos;
}

// ---- date: instants in UTC milliseconds; zone-less values are taken as +08:00.
long long days_from_civil(int y, int m, int d) {
  y -= m <= 2;
  const long long era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<long long>(doe) - 719468;
}

struct range {
  long long lo, hi;  // [lo, hi) in ms
};

std::optional<range> range_of(const fp::temporal& t) {
  int month = t.prec >= fp::precision::month ? t.month : 1;
  int day = t.prec >= fp::precision::day ? t.day : 1;
  long long start_days = days_from_civil(t.year, month, day);
  long long ms = start_days * 86400000LL + t.hour * 3600000LL + t.minute * 60000LL + t.second * 1000LL + t.millisecond;
  ms -= static_cast<long long>(t.has_tz ? t.tz_minutes : 480) * 60000LL;
  long long end;
  switch (t.prec) {
    case fp::precision::year: end = ms + (days_from_civil(t.year + 1, 1, 1) - start_days) * 86400000LL; break;
    case fp::precision::month: {
      int y = t.month == 12 ? t.year + 1 : t.year, m = t.month == 12 ? 1 : t.month + 1;
      end = ms + (days_from_civil(y, m, 1) - start_days) * 86400000LL;
      break;
    }
    case fp::precision::day: end = ms + 86400000LL; break;
    case fp::precision::hour: end = ms + 3600000LL; break;
    case fp::precision::minute: end = ms + 60000LL; break;
    case fp::precision::second: end = ms + 1000LL; break;
    default: end = ms + 1; break;
  }
  return range{ms, end};
}

std::optional<range> range_of_text(std::string_view text, fp::item_kind kind) {
  auto t = fp::parse_temporal(text, kind);
  if (!t) return std::nullopt;
  return range_of(*t);
}

// The value's written text and its range; false for element kinds this test does not model.
bool dates_of(const fp::item& it, std::vector<std::pair<std::string, range>>& out) {
  if (!it.is_node() || !it.node) return it.is_node();
  std::string_view t = it.fhir_type;
  const fhir::value& n = *it.node;
  auto add = [&](const std::string& text, fp::item_kind kind) {
    if (auto r = range_of_text(text, kind)) out.push_back({text, *r});
    return true;
  };
  if (t == "date") return add(n.text(), fp::item_kind::date);
  if (t == "dateTime" || t == "instant") return add(n.text(), fp::item_kind::datetime);
  if (t == "Period") {
    const std::string* s = text_member(n, "start");
    const std::string* e = text_member(n, "end");
    range r{LLONG_MIN, LLONG_MAX};
    if (s) {
      auto sr = range_of_text(*s, fp::item_kind::datetime);
      if (!sr) return false;
      r.lo = sr->lo;
    }
    if (e) {
      auto er = range_of_text(*e, fp::item_kind::datetime);
      if (!er) return false;
      r.hi = er->hi;
    }
    out.push_back({"", r});  // a Period is matched, never sampled
    return true;
  }
  return false;  // Timing and others: not modelled
}

bool uris_of(const fp::item& it, std::vector<std::string>& out) {
  if (!it.is_node() || !it.node) return it.is_node();
  std::string_view t = it.fhir_type;
  if (t != "uri" && t != "url" && t != "canonical" && t != "oid" && t != "uuid") return false;
  out.push_back(it.node->text());
  return true;
}

// ---- one check: a search value and the ids expected.
struct check {
  std::string type, param, param_type, value;
  std::set<std::string> expected;
};

struct mismatch_report {
  std::map<std::string, std::size_t> by_param_type;
  std::vector<std::string> details;
};

std::set<std::string> search_ids(const gateway::fhir_api& api, const std::string& type, const std::string& param,
                                 const std::string& value, std::string& error) {
  std::set<std::string> ids;
  std::string target = "/fhir/" + type + "?" + param + "=" + url_encode(value) + "&_count=1000&_total=accurate";
  for (int page = 0; page < 50 && !target.empty(); ++page) {
    gateway::http_request req;
    req.method = "GET";
    req.target = target;
    auto resp = api.handle(req);
    if (resp.status != 200) {
      error = std::to_string(resp.status) + " " + resp.body.substr(0, 200);
      return ids;
    }
    fhir::value bundle;
    fhir::issue_list issues;
    if (!fhir::parse_json(resp.body, bundle, issues)) {
      error = "unparsable bundle";
      return ids;
    }
    if (const fhir::value* entries = bundle.find("entry"))
      for (const auto& e : entries->items()) {
        const fhir::value* r = e.find("resource");
        const fhir::value* id = r ? r->find("id") : nullptr;
        if (id) ids.insert(id->text());
      }
    target.clear();
    if (const fhir::value* links = bundle.find("link"))
      for (const auto& l : links->items()) {
        const std::string* rel = text_member(l, "relation");
        const std::string* url = text_member(l, "url");
        if (rel && url && *rel == "next") {
          auto at = url->find("/fhir/");
          if (at != std::string::npos) target = url->substr(at);
        }
      }
  }
  return ids;
}

std::string join(const std::set<std::string>& s, std::size_t limit = 8) {
  std::string out;
  std::size_t n = 0;
  for (const auto& x : s) {
    if (n++ == limit) {
      out += " ...";
      break;
    }
    out += (out.empty() ? "" : " ") + x;
  }
  return "{" + out + "}";
}

// Deterministic sample: up to `n` values spread evenly over the sorted distinct candidates.
template <class T>
std::vector<T> sample(const std::set<T>& candidates, std::size_t n) {
  std::vector<T> all(candidates.begin(), candidates.end()), out;
  if (all.empty()) return out;
  for (std::size_t i = 0; i < n && i < all.size(); ++i) out.push_back(all[i * all.size() / std::min(n, all.size())]);
  return out;
}

}  // namespace

TEST_CASE("search reference: server results equal a direct FHIRPath evaluation over the official examples") {
  const std::filesystem::path package = YILIAN_FHIR_PACKAGE_DIR;
  REQUIRE_MESSAGE(std::filesystem::is_directory(package),
                  "the official package is missing: run scripts/fetch-fhir-package");
  std::string url = test::fresh_database_url("search_reference");
  if (url.empty()) {
    MESSAGE("YILIAN_TEST_DATABASE_URL_FILE unset: skipped");
    return;
  }
  auto known_invalid = test::known_failures("validation-known-invalid-examples.txt");
  auto known_differences = test::known_failures("search-reference-known-differences.txt");

  gateway::resource_store store(url, 4);
  store.migrate();
  gateway::fhir_api_options options;
  options.base_url = "http://test.local/fhir";
  gateway::fhir_api api(store, options);

  // Load: parse every example, keep those with an id, PUT them from a few threads.
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(package))
    if (e.path().extension() == ".json" && e.path().filename() != "package.json" &&
        !known_invalid.count(e.path().filename().string()))
      files.push_back(e.path());
  std::sort(files.begin(), files.end());
  REQUIRE(files.size() > 5000);

  std::map<std::string, std::vector<stored_resource>> by_type;
  std::vector<std::pair<std::string, std::string>> puts;  // target, body
  for (const auto& file : files) {
    std::string text = test::read_file(file);
    fhir::value v;
    fhir::issue_list issues;
    if (!fhir::parse_json(text, v, issues)) continue;
    const fhir::value* type = v.find("resourceType");
    const fhir::value* id = v.find("id");
    if (!type || !id) continue;
    puts.push_back({"/fhir/" + type->text() + "/" + id->text(), std::move(text)});
    by_type[type->text()].push_back({id->text(), std::move(v)});
  }
  std::atomic<std::size_t> next{0}, failed_puts{0};
  std::vector<std::thread> loaders;
  for (int t = 0; t < 4; ++t)
    loaders.emplace_back([&] {
      for (std::size_t i; (i = next++) < puts.size();) {
        gateway::http_request req;
        req.method = "PUT";
        req.target = puts[i].first;
        req.headers = {{"Content-Type", "application/fhir+json"}};
        req.body = puts[i].second;
        auto resp = api.handle(req);
        if (resp.status != 200 && resp.status != 201) ++failed_puts;
      }
    });
  for (auto& t : loaders) t.join();
  REQUIRE(failed_puts == 0);
  // Several examples share a type and id; the last one written wins, so the expectation uses the
  // one the server really holds: drop types whose ids are not unique from the comparison.
  std::set<std::string> types_with_duplicate_ids;
  for (auto& [type, list] : by_type) {
    std::set<std::string> ids;
    for (const auto& r : list)
      if (!ids.insert(r.id).second) types_with_duplicate_ids.insert(type);
  }

  const auto& defs = fhir::definitions::r4();
  std::vector<check> checks;
  std::size_t params_skipped = 0;
  for (const auto& [type, resources] : by_type) {
    if (types_with_duplicate_ids.count(type)) continue;
    for (const fhir::search_param_def* p : defs.search_params(type)) {
      // meta.lastUpdated is assigned by the server on write, so the examples' values are not what
      // it holds: _lastUpdated is not comparable with the files.
      if (p->expression.empty() || p->code == "_lastUpdated") continue;
      const std::string& pt = p->type;
      if (pt != "token" && pt != "string" && pt != "reference" && pt != "date" && pt != "uri") continue;
      std::optional<fp::expression> expr;
      try {
        expr = fp::compile(p->expression);
      } catch (const std::exception&) {
        ++params_skipped;
        continue;
      }
      // Evaluate once per resource; remember each resource's items.
      std::vector<fp::collection> results(resources.size());
      bool modelled = true;
      for (std::size_t i = 0; i < resources.size() && modelled; ++i) {
        try {
          results[i] = expr->evaluate(resources[i].body);
        } catch (const std::exception&) {
          modelled = false;
        }
      }
      if (!modelled) {
        ++params_skipped;
        continue;
      }
      auto add_check = [&](std::string value, std::set<std::string> expected) {
        std::string key = type + "?" + p->code + "=" + value;
        if (known_differences.count(key)) return;
        checks.push_back({type, p->code, pt, std::move(value), std::move(expected)});
      };

      if (pt == "token") {
        std::vector<std::vector<token>> per(resources.size());
        for (std::size_t i = 0; i < resources.size() && modelled; ++i)
          for (const auto& it : results[i]) modelled = modelled && tokens_of(it, per[i]);
        if (!modelled) {
          ++params_skipped;
          continue;
        }
        std::set<std::pair<std::string, std::string>> with_system;
        std::set<std::string> codes;
        for (const auto& tokens : per)
          for (const auto& t : tokens) {
            if (t.code.empty() || t.code.size() > 200) continue;
            codes.insert(t.code);
            if (t.system && !t.system->empty() && t.system->find('|') == std::string::npos)
              with_system.insert({*t.system, t.code});
          }
        for (const auto& code : sample(codes, values_per_param)) {
          if (code.find('|') != std::string::npos || code.find(',') != std::string::npos) continue;
          std::set<std::string> expected;
          for (std::size_t i = 0; i < resources.size(); ++i)
            for (const auto& t : per[i])
              if (t.code == code) expected.insert(resources[i].id);
          add_check(code, std::move(expected));
        }
        for (const auto& [system, code] : sample(with_system, values_per_param)) {
          if (code.find(',') != std::string::npos || system.find(',') != std::string::npos) continue;
          std::set<std::string> expected;
          for (std::size_t i = 0; i < resources.size(); ++i)
            for (const auto& t : per[i])
              if (t.code == code && t.system && *t.system == system) expected.insert(resources[i].id);
          add_check(system + "|" + code, std::move(expected));
        }
        add_check("http://example.org/no-such-system|no-such-code-" + p->code, {});
      } else if (pt == "string") {
        std::vector<std::vector<std::string>> per(resources.size());
        for (std::size_t i = 0; i < resources.size() && modelled; ++i)
          for (const auto& it : results[i]) modelled = modelled && strings_of(it, per[i]);
        if (!modelled) {
          ++params_skipped;
          continue;
        }
        std::set<std::string> prefixes;
        for (const auto& texts : per)
          for (const auto& s : texts)
            if (auto pre = search_prefix(s); pre.size() >= 2) prefixes.insert(pre);
        for (const auto& prefix : sample(prefixes, values_per_param)) {
          std::set<std::string> expected;
          bool unsure = false;
          for (std::size_t i = 0; i < resources.size(); ++i)
            for (const auto& s : per[i]) {
              auto m = match_string(s, prefix);
              if (m == string_match::yes) expected.insert(resources[i].id);
              unsure = unsure || m == string_match::unsure;
            }
          // Only values whose expectation does not depend on the server's accent and punctuation
          // normalisation are compared.
          if (!unsure) add_check(prefix, std::move(expected));
        }
        add_check("zzqxnomatch", {});
      } else if (pt == "reference") {
        std::vector<std::vector<std::string>> per(resources.size());
        for (std::size_t i = 0; i < resources.size() && modelled; ++i)
          for (const auto& it : results[i]) modelled = modelled && references_of(it, per[i]);
        if (!modelled) {
          ++params_skipped;
          continue;
        }
        std::set<std::string> refs;
        for (const auto& list : per)
          for (const auto& r : list)
            if (is_relative_reference(r)) refs.insert(r);
        for (const auto& ref : sample(refs, values_per_param)) {
          std::set<std::string> expected;
          for (std::size_t i = 0; i < resources.size(); ++i)
            for (const auto& r : per[i])
              if (r == ref) expected.insert(resources[i].id);
          add_check(ref, std::move(expected));
        }
        add_check("Patient/no-such-patient-for-" + p->code, {});
      } else if (pt == "date") {
        std::vector<std::vector<std::pair<std::string, range>>> per(resources.size());
        for (std::size_t i = 0; i < resources.size() && modelled; ++i)
          for (const auto& it : results[i]) modelled = modelled && dates_of(it, per[i]);
        if (!modelled) {
          ++params_skipped;
          continue;
        }
        std::set<std::string> written;
        for (const auto& list : per)
          for (const auto& [text, r] : list)
            if (!text.empty()) written.insert(text);
        for (const auto& text : sample(written, values_per_param)) {
          // eq: the resource's range lies within the search value's range.
          auto search = range_of_text(text, text.find('T') == std::string::npos ? fp::item_kind::date
                                                                                 : fp::item_kind::datetime);
          if (!search) continue;
          std::set<std::string> expected;
          for (std::size_t i = 0; i < resources.size(); ++i)
            for (const auto& [t, r] : per[i])
              if (r.lo >= search->lo && r.hi <= search->hi) expected.insert(resources[i].id);
          add_check("eq" + text, std::move(expected));
        }
        add_check("eq1066-10-14", {});
      } else {  // uri
        std::vector<std::vector<std::string>> per(resources.size());
        for (std::size_t i = 0; i < resources.size() && modelled; ++i)
          for (const auto& it : results[i]) modelled = modelled && uris_of(it, per[i]);
        if (!modelled) {
          ++params_skipped;
          continue;
        }
        std::set<std::string> uris;
        for (const auto& list : per)
          for (const auto& u : list)
            if (!u.empty() && u.find(',') == std::string::npos && u.find('|') == std::string::npos) uris.insert(u);
        for (const auto& uri : sample(uris, values_per_param)) {
          std::set<std::string> expected;
          for (std::size_t i = 0; i < resources.size(); ++i)
            for (const auto& u : per[i])
              if (u == uri) expected.insert(resources[i].id);
          add_check(uri, std::move(expected));
        }
        add_check("http://example.org/no-such-uri", {});
      }
    }
  }

  // Run the searches from a few threads.
  std::vector<std::string> outcome(checks.size());  // empty = agreed
  next = 0;
  std::vector<std::thread> searchers;
  for (int t = 0; t < 4; ++t)
    searchers.emplace_back([&] {
      for (std::size_t i; (i = next++) < checks.size();) {
        const check& c = checks[i];
        std::string error;
        auto got = search_ids(api, c.type, c.param, c.value, error);
        if (!error.empty()) {
          outcome[i] = "error " + error;
        } else if (got != c.expected) {
          std::set<std::string> missing, extra;
          std::set_difference(c.expected.begin(), c.expected.end(), got.begin(), got.end(),
                              std::inserter(missing, missing.end()));
          std::set_difference(got.begin(), got.end(), c.expected.begin(), c.expected.end(),
                              std::inserter(extra, extra.end()));
          outcome[i] = "expected " + std::to_string(c.expected.size()) + " got " + std::to_string(got.size()) +
                       "; missing " + join(missing) + " extra " + join(extra);
        }
      }
    });
  for (auto& t : searchers) t.join();

  std::map<std::string, std::pair<std::size_t, std::size_t>> per_type;  // param type -> checks, mismatches
  std::size_t mismatches = 0, negative = 0;
  std::ostringstream details;
  for (std::size_t i = 0; i < checks.size(); ++i) {
    auto& counts = per_type[checks[i].param_type];
    ++counts.first;
    if (checks[i].expected.empty()) ++negative;
    if (outcome[i].empty()) continue;
    ++counts.second;
    ++mismatches;
    details << "  " << checks[i].param_type << " " << checks[i].type << "?" << checks[i].param << "="
            << checks[i].value << ": " << outcome[i] << "\n";
  }
  std::ostringstream summary;
  summary << checks.size() << " searches compared (" << negative << " expecting nothing), " << mismatches
          << " mismatches, " << params_skipped << " parameters not modelled;";
  for (const auto& [pt, counts] : per_type) summary << " " << pt << " " << counts.second << "/" << counts.first;
  MESSAGE(summary.str());
  CHECK_MESSAGE(mismatches == 0, "mismatches (key for the known-differences file: Type?param=value):\n"
                                     << details.str());
  CHECK(checks.size() - negative > 2500);  // values drawn from the data, not just the no-match ones
}
