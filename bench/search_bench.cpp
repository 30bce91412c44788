// Search benchmark: generates the data set of search_dataset.hpp, loads it through resource_store
// (with and without search indexing, to price the index writes), then times the searches users of
// other FHIR servers report as slow through fhir_api::handle in-process, single-client and under
// concurrent load, and writes a Markdown report. Every response is checked (status, searchset,
// entry counts against what the generator knows), so no number comes from an error response.
//
//   bench_search --database-url URL [--patients 10000] [--clients 8] [--duration 5] ... (--help)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <mutex>
#include <optional>
#include <pqxx/pqxx>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "bench_database.hpp"
#include "search_dataset.hpp"
#include "search_load.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/fhir/validator.hpp"
#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/resource_store.hpp"

using namespace yilian;
using namespace yilian::bench;
using clock_type = std::chrono::steady_clock;

namespace {

using bench::recreate_database;
using bench::with_database;

constexpr std::string_view base_url = "http://bench.local/fhir";

struct options {
  std::string database_url;
  std::string database = "yilian_search_bench";
  dataset_config data;
  unsigned load_threads = 4;
  unsigned clients = 8;
  double duration = 5;             // seconds of concurrent load per query
  std::size_t iterations = 50;     // single-client runs per query
  std::size_t index_sample = 20'000;  // Observations in the indexing-cost comparison (0 = skip it)
  std::size_t pages = 25;          // depth of the paging walks
  std::size_t walks = 5;
  std::set<std::string> only;      // query names; empty = all
  bool reuse = false;
  bool durable_load = false;
  std::string report;              // Markdown output file ("" = stdout only)
  std::string note;                // free text for the report header (build, commit)
};

const char* usage =
    "usage: bench_search --database-url URL [options]\n"
    "  --database-url URL      PostgreSQL server (default: $YILIAN_DATABASE_URL); the bench creates and drops\n"
    "                          its own databases there (--database NAME, NAME_idx_off, NAME_idx_on)\n"
    "  --patients N            patients (10000); each has --observations-per-patient (50) Observations\n"
    "  --seed N                generator seed (20261123)\n"
    "  --load-threads N        loading threads (4)\n"
    "  --index-sample N        Observations loaded with and without search indexing (20000; 0 = skip)\n"
    "  --durable-load          load the full data set with synchronous_commit on (default off: bulk-load\n"
    "                          setting; the indexing-cost comparison always uses the server's default)\n"
    "  --reuse                 keep an already loaded database of the same size, seed and schema version\n"
    "                          (reload after changing the indexer)\n"
    "  --clients N             concurrent client threads (8)\n"
    "  --duration S            seconds of concurrent load per query (5)\n"
    "  --iterations N          single-client runs per query (50)\n"
    "  --pages N --walks N     paging depth (25) and number of walks (5)\n"
    "  --only a,b,...          run only these queries (names as in the report)\n"
    "  --report FILE           write the Markdown report there too\n"
    "  --note TEXT             line for the report header (e.g. the commit)\n";

std::size_t parse_count(const std::string& flag, const std::string& text) {
  std::size_t used = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty()) throw std::invalid_argument(flag + " needs a whole number, not '" + text + "'");
  return static_cast<std::size_t>(v);
}

options parse_options(int argc, char** argv) {
  options o;
  if (const char* env = std::getenv("YILIAN_DATABASE_URL")) o.database_url = env;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) throw std::invalid_argument(a + " needs a value");
      return args[++i];
    };
    if (a == "--help" || a == "-h") {
      std::cout << usage;
      std::exit(0);
    } else if (a == "--database-url") o.database_url = value();
    else if (a == "--database") o.database = value();
    else if (a == "--patients") o.data.patients = parse_count(a, value());
    else if (a == "--observations-per-patient") o.data.observations_per_patient = parse_count(a, value());
    else if (a == "--seed") o.data.seed = parse_count(a, value());
    else if (a == "--load-threads") o.load_threads = static_cast<unsigned>(parse_count(a, value()));
    else if (a == "--index-sample") o.index_sample = parse_count(a, value());
    else if (a == "--durable-load") o.durable_load = true;
    else if (a == "--reuse") o.reuse = true;
    else if (a == "--clients") o.clients = static_cast<unsigned>(parse_count(a, value()));
    else if (a == "--duration") o.duration = static_cast<double>(parse_count(a, value()));
    else if (a == "--iterations") o.iterations = parse_count(a, value());
    else if (a == "--pages") o.pages = parse_count(a, value());
    else if (a == "--walks") o.walks = parse_count(a, value());
    else if (a == "--only") {
      std::stringstream list(value());
      for (std::string name; std::getline(list, name, ',');)
        if (!name.empty()) o.only.insert(name);
    } else if (a == "--report") o.report = value();
    else if (a == "--note") o.note = value();
    else throw std::invalid_argument("unknown option " + a + "\n" + usage);
  }
  if (o.database_url.empty()) throw std::invalid_argument(std::string("no database: give --database-url or set YILIAN_DATABASE_URL\n") + usage);
  if (o.data.patients == 0 || o.data.observations_per_patient == 0)
    throw std::invalid_argument("--patients and --observations-per-patient must be at least 1");
  if (o.load_threads == 0 || o.clients == 0) throw std::invalid_argument("--load-threads and --clients must be at least 1");
  for (char c : o.database)
    if (!(std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '_'))
      throw std::invalid_argument("--database takes lower-case letters, digits and '_' only");
  return o;
}

// --- database URLs ----------------------------------------------------------------------------

std::string with_query_parameter(const std::string& url, const std::string& parameter) {
  return url + (url.find('?') == std::string::npos ? "?" : "&") + parameter;
}

void drop_database(const std::string& admin_url, const std::string& name) {
  pqxx::connection c(admin_url);
  pqxx::nontransaction tx(c);
  tx.exec("DROP DATABASE IF EXISTS " + tx.quote_name(name) + " WITH (FORCE)");
}

bool database_exists(const std::string& admin_url, const std::string& name) {
  pqxx::connection c(admin_url);
  pqxx::nontransaction tx(c);
  return !tx.exec_params("SELECT 1 FROM pg_database WHERE datname = $1", name).empty();
}

// --- formatting --------------------------------------------------------------------------------

std::string fixed(double v, int decimals) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(decimals) << v;
  return s.str();
}

std::string thousands(double v) {
  auto n = static_cast<long long>(std::llround(v));
  std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return (n < 0 ? "-" : "") + out;
}

// Markdown table cells: a '|' inside (token searches) would end the cell.
std::string cell(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '|') out += '\\';
    out += c;
  }
  return out;
}

std::string ms(double seconds) { return fixed(seconds * 1000, seconds < 0.01 ? 2 : 1) + " ms"; }

// Query-string value: unreserved characters and ':' '/' stay, everything else (| , UTF-8) is escaped.
std::string encode(std::string_view v) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : v) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == ':' || c == '/') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

std::string loinc_token(std::size_t code) { return encode(std::string(loinc_system) + "|" + std::string(code_at(code).loinc)); }

// --- responses ---------------------------------------------------------------------------------

struct bundle_summary {
  std::size_t matches = 0;
  std::size_t includes = 0;
  std::optional<long long> total;
  std::string next;  // target of the next link ("" = last page)
  std::vector<std::string> match_urls;
  std::string error;  // why the response is not a usable searchset ("" = it is)
};

const fhir::value* at(const fhir::value* v, std::string_view name) { return v && v->is_object() ? v->find(name) : nullptr; }

std::string outcome_text(const fhir::value& outcome) {
  std::string text;
  if (const auto* issues = at(&outcome, "issue"); issues && issues->is_array())
    for (const auto& issue : issues->items()) {
      const auto* d = at(&issue, "diagnostics");
      if (d && d->is_string()) text += (text.empty() ? "" : "; ") + d->text();
    }
  return text.empty() ? fhir::to_json(outcome) : text;
}

bundle_summary inspect(const gateway::http_response& response) {
  bundle_summary s;
  fhir::value body;
  fhir::issue_list issues;
  const bool parsed = fhir::parse_json(response.body, body, issues);
  if (response.status != 200) {
    s.error = "HTTP " + std::to_string(response.status) + (parsed ? ": " + outcome_text(body) : "");
    return s;
  }
  const auto* type = at(&body, "type");
  if (!parsed || !at(&body, "resourceType") || at(&body, "resourceType")->text() != "Bundle" || !type ||
      type->text() != "searchset") {
    s.error = "not a searchset Bundle: " + response.body.substr(0, 300);
    return s;
  }
  if (const auto* total = at(&body, "total"); total && total->is_number()) s.total = std::stoll(total->text());
  if (const auto* links = at(&body, "link"); links && links->is_array())
    for (const auto& link : links->items())
      if (const auto* relation = at(&link, "relation"); relation && relation->text() == "next")
        if (const auto* url = at(&link, "url")) s.next = url->text();
  if (const auto* entries = at(&body, "entry"); entries && entries->is_array())
    for (const auto& entry : entries->items()) {
      const auto* mode = at(at(&entry, "search"), "mode");
      const std::string m = mode ? mode->text() : "match";
      if (m == "match") {
        ++s.matches;
        if (const auto* url = at(&entry, "fullUrl")) s.match_urls.push_back(url->text());
      } else if (m == "include") {
        ++s.includes;
      } else if (m == "outcome") {
        // An ignored or unsupported parameter: the numbers would be for a different query.
        const auto* resource = at(&entry, "resource");
        s.error = "the server reported: " + (resource ? outcome_text(*resource) : std::string("an outcome"));
      }
    }
  return s;
}

// What a query must return; the generator knows the data, so most bounds are exact.
struct expectation {
  std::size_t min_matches = 0;
  std::size_t max_matches = 50;
  std::size_t min_includes = 0;
  std::optional<long long> total;
};

struct drawn_query {
  std::string target;  // "/fhir/Observation?..."
  expectation expect;
};

std::string check(const bundle_summary& s, const expectation& e) {
  if (!s.error.empty()) return s.error;
  if (s.matches < e.min_matches || s.matches > e.max_matches)
    return std::to_string(s.matches) + " matches, expected " + std::to_string(e.min_matches) + ".." +
           std::to_string(e.max_matches);
  if (s.includes < e.min_includes)
    return std::to_string(s.includes) + " included resources, expected at least " + std::to_string(e.min_includes);
  if (e.total && s.total != e.total)
    return "total " + (s.total ? std::to_string(*s.total) : std::string("absent")) + ", expected " +
           std::to_string(*e.total);
  return {};
}

struct query_failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// --- what the generator knows about the data ---------------------------------------------------

struct data_facts {
  std::vector<std::size_t> code_count;              // Observations per code index
  std::vector<std::size_t> patients_with_code;      // distinct patients per code index
  std::size_t page_size = 50;
};

data_facts facts_of(const dataset_config& config) {
  data_facts f;
  f.code_count.assign(common_codes.size() + 1, 0);
  f.patients_with_code.assign(common_codes.size() + 1, 0);
  for (std::size_t i = 0; i < config.patients; ++i) {
    const std::size_t hospital = patient_facts_of(config, i).hospital;
    std::vector<bool> seen(common_codes.size() + 1, false);
    for (std::size_t k = 0; k < config.observations_per_patient; ++k) {
      const std::size_t code = observation_facts_of(config, i, k, hospital).code;
      ++f.code_count[code];
      if (!seen[code]) ++f.patients_with_code[code];
      seen[code] = true;
    }
  }
  return f;
}

// --- the queries -------------------------------------------------------------------------------

struct query_case {
  std::string name;
  std::string shape;  // the query as shown in the report
  bool is_read = false;  // the GET-by-id baseline: any 200 with a body
  std::function<drawn_query(random_stream&)> draw;
};

std::vector<query_case> query_cases(const dataset_config& config, const data_facts& facts) {
  const std::size_t page = facts.page_size;
  const std::size_t patients = config.patients;
  // National ids are unique by construction for the first 5,000 patients.
  const std::size_t unique_id_patients = std::min<std::size_t>(patients, 5'000);
  const std::string national_id_system = std::string(profiles::identifier_system::national_id);
  std::vector<query_case> cases;

  cases.push_back({"read", "GET Patient/[id] (baseline)", true, [=](random_stream& r) {
                     return drawn_query{"/fhir/Patient/" + patient_id(r.below(patients)), {}};
                   }});

  cases.push_back({"patient-code-date",
                   "Observation?subject=Patient/[id]&code=http://loinc.org|[code]&date=ge[Y]-01-01&date=lt[Y+1]-01-01",
                   false, [=](random_stream& r) {
                     // Drawn from one of the patient's Observations; the bounds allow for the date
                     // boundaries being read in any time zone (±14 h).
                     const std::size_t i = r.below(patients);
                     const std::size_t hospital = patient_facts_of(config, i).hospital;
                     const auto chosen = observation_facts_of(config, i, r.below(config.observations_per_patient), hospital);
                     const int year = year_of(chosen.effective_seconds);
                     const std::int64_t low = days_from_civil(year, 1, 1) * 86'400;
                     const std::int64_t high = days_from_civil(year + 1, 1, 1) * 86'400;
                     const std::int64_t margin = 14 * 3600;
                     expectation e;
                     e.min_matches = 0;
                     e.max_matches = 0;
                     for (std::size_t k = 0; k < config.observations_per_patient; ++k) {
                       const auto o = observation_facts_of(config, i, k, hospital);
                       if (o.code != chosen.code) continue;
                       const std::int64_t utc = o.effective_seconds - 8 * 3600;
                       if (utc >= low + margin && utc < high - margin) ++e.min_matches;
                       if (utc >= low - margin && utc < high + margin) ++e.max_matches;
                     }
                     e.min_matches = std::min(e.min_matches, page);
                     e.max_matches = std::min(e.max_matches, page);
                     return drawn_query{"/fhir/Observation?subject=Patient/" + patient_id(i) + "&code=" +
                                            loinc_token(chosen.code) + "&date=ge" + std::to_string(year) +
                                            "-01-01&date=lt" + std::to_string(year + 1) + "-01-01",
                                        e};
                   }});

  cases.push_back({"identifier", "Patient?identifier=urn:oid:2.16.156.10011.1.3|[身份证号]", false,
                   [=](random_stream& r) {
                     const auto p = patient_facts_of(config, r.below(unique_id_patients));
                     return drawn_query{"/fhir/Patient?identifier=" + encode(national_id_system + "|" + p.national_id),
                                        {1, 1, 0, {}}};
                   }});

  cases.push_back({"include", "Observation?code=http://loinc.org|[code]&_include=Observation:subject", false,
                   [=](random_stream& r) {
                     const std::size_t code = r.below(common_codes.size());
                     const std::size_t n = std::min(facts.code_count[code], page);
                     return drawn_query{"/fhir/Observation?code=" + loinc_token(code) + "&_include=Observation:subject",
                                        {n, n, n > 0 ? 1u : 0u, {}}};
                   }});

  cases.push_back({"chain", "Observation?subject:Patient.identifier=urn:oid:2.16.156.10011.1.3|[身份证号]", false,
                   [=](random_stream& r) {
                     const auto p = patient_facts_of(config, r.below(unique_id_patients));
                     const std::size_t n = std::min(config.observations_per_patient, page);
                     return drawn_query{"/fhir/Observation?subject:Patient.identifier=" +
                                            encode(national_id_system + "|" + p.national_id),
                                        {n, n, 0, {}}};
                   }});

  cases.push_back({"revinclude", "Patient?_id=[id]&_revinclude=Observation:subject", false, [=](random_stream& r) {
                     return drawn_query{"/fhir/Patient?_id=" + patient_id(r.below(patients)) +
                                            "&_revinclude=Observation:subject",
                                        {1, 1, 1, {}}};
                   }});

  cases.push_back({"has-rare", "Patient?_has:Observation:subject:code=http://loinc.org|10839-9 (rare code)", false,
                   [=](random_stream&) {
                     const std::size_t n = std::min(facts.patients_with_code[rare_code_index], page);
                     return drawn_query{"/fhir/Patient?_has:Observation:subject:code=" + loinc_token(rare_code_index),
                                        {n, n, 0, {}}};
                   }});

  cases.push_back({"has-common", "Patient?_has:Observation:subject:code=http://loinc.org|[common code]", false,
                   [=](random_stream& r) {
                     const std::size_t code = r.below(common_codes.size());
                     const std::size_t n = std::min(facts.patients_with_code[code], page);
                     return drawn_query{"/fhir/Patient?_has:Observation:subject:code=" + loinc_token(code), {n, n, 0, {}}};
                   }});

  cases.push_back({"total", "Observation?code=http://loinc.org|[code]&_total=accurate", false, [=](random_stream& r) {
                     const std::size_t code = r.below(common_codes.size());
                     const std::size_t n = std::min(facts.code_count[code], page);
                     return drawn_query{"/fhir/Observation?code=" + loinc_token(code) + "&_total=accurate",
                                        {n, n, 0, static_cast<long long>(facts.code_count[code])}};
                   }});

  cases.push_back({"name", "Patient?name=[family name, e.g. 王]", false, [=](random_stream& r) {
                     const auto p = patient_facts_of(config, r.below(patients));
                     return drawn_query{"/fhir/Patient?name=" + encode(p.family), {1, page, 0, {}}};
                   }});

  cases.push_back({"birthdate-gender", "Patient?birthdate=ge[1940..2000]&gender=female", false, [=](random_stream& r) {
                     const auto year = 1940 + r.below(61);
                     return drawn_query{"/fhir/Patient?birthdate=ge" + std::to_string(year) + "&gender=female",
                                        {patients >= 200 ? 1u : 0u, page, 0, {}}};
                   }});
  return cases;
}

// --- running -----------------------------------------------------------------------------------

struct latency {
  std::size_t requests = 0;
  double p50 = 0, p99 = 0, mean = 0;  // seconds
  double per_second = 0;
};

latency summarise(std::vector<double> seconds, double wall) {
  latency l;
  l.requests = seconds.size();
  if (seconds.empty()) return l;
  std::sort(seconds.begin(), seconds.end());
  auto pct = [&](double p) { return seconds[std::min(seconds.size() - 1, static_cast<std::size_t>(p * seconds.size()))]; };
  l.p50 = pct(0.50);
  l.p99 = pct(0.99);
  double sum = 0;
  for (double s : seconds) sum += s;
  l.mean = sum / static_cast<double>(seconds.size());
  l.per_second = wall > 0 ? static_cast<double>(seconds.size()) / wall : 0;
  return l;
}

gateway::http_request get(const std::string& target) {
  gateway::http_request req;
  req.method = "GET";
  req.target = target;
  req.headers.push_back({"Accept", "application/fhir+json"});
  return req;
}

// Times one request and checks its answer; throws query_failure with the target on a bad one.
struct timed_answer {
  double seconds;
  bundle_summary summary;
};
timed_answer run_once(const gateway::fhir_api& api, const query_case& q, const drawn_query& d, bool inspect_body) {
  const auto start = clock_type::now();
  gateway::http_response response = api.handle(get(d.target));
  const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  timed_answer a{seconds, {}};
  if (q.is_read) {
    if (response.status != 200 || response.body.empty())
      throw query_failure(d.target + ": HTTP " + std::to_string(response.status));
    return a;
  }
  if (!inspect_body) {
    if (response.status != 200) throw query_failure(d.target + ": " + inspect(response).error);
    return a;
  }
  a.summary = inspect(response);
  if (auto problem = check(a.summary, d.expect); !problem.empty()) throw query_failure(d.target + ": " + problem);
  return a;
}

struct case_result {
  const query_case* query = nullptr;
  std::string example;
  latency single;
  latency concurrent;
  double mean_matches = 0, mean_includes = 0;
  std::string failure;
};

case_result run_case(const gateway::fhir_api& api, const query_case& q, const options& o, std::uint64_t case_index) {
  case_result result;
  result.query = &q;
  try {
    random_stream r(o.data.seed, 1000, case_index);
    std::vector<double> times;
    std::size_t matches = 0, includes = 0;
    const auto single_start = clock_type::now();
    for (std::size_t i = 0; i < o.iterations; ++i) {
      drawn_query d = q.draw(r);
      if (i == 0) result.example = d.target;
      auto a = run_once(api, q, d, true);
      times.push_back(a.seconds);
      matches += a.summary.matches;
      includes += a.summary.includes;
    }
    result.single = summarise(times, std::chrono::duration<double>(clock_type::now() - single_start).count());
    result.mean_matches = o.iterations ? static_cast<double>(matches) / static_cast<double>(o.iterations) : 0;
    result.mean_includes = o.iterations ? static_cast<double>(includes) / static_cast<double>(o.iterations) : 0;

    // Concurrent: every client draws its own parameters; one response in eight is fully checked
    // (parsing every one would take the clients' CPU from the server on a small machine).
    std::vector<std::vector<double>> per_client(o.clients);
    std::atomic<bool> stop{false};
    std::string failure;
    std::mutex failure_mutex;
    const auto deadline = clock_type::now() + std::chrono::duration<double>(o.duration);
    const auto start = clock_type::now();
    std::vector<std::thread> clients;
    for (unsigned c = 0; c < o.clients; ++c)
      clients.emplace_back([&, c] {
        random_stream cr(o.data.seed, 2000 + c, case_index);
        try {
          for (std::size_t n = 0; !stop && clock_type::now() < deadline; ++n)
            per_client[c].push_back(run_once(api, q, q.draw(cr), n % 8 == 0).seconds);
        } catch (const std::exception& e) {
          std::lock_guard lock(failure_mutex);
          if (failure.empty()) failure = e.what();
          stop = true;
        }
      });
    for (auto& t : clients) t.join();
    if (!failure.empty()) throw query_failure(failure);
    const double wall = std::chrono::duration<double>(clock_type::now() - start).count();
    std::vector<double> all;
    for (auto& v : per_client) all.insert(all.end(), v.begin(), v.end());
    result.concurrent = summarise(std::move(all), wall);
  } catch (const std::exception& e) {
    result.failure = e.what();
  }
  return result;
}

// Walks next links `pages` deep from the first page of a common code; time per page by depth.
struct paging_result {
  std::vector<std::vector<double>> seconds_at_depth;  // [depth][walk]
  std::string example;
  std::string deepest_target;  // the last page requested by the first walk
  std::string failure;
};

paging_result run_paging(const gateway::fhir_api& api, const options& o, const data_facts& facts) {
  paging_result result;
  result.seconds_at_depth.resize(o.pages);
  try {
    for (std::size_t w = 0; w < o.walks; ++w) {
      const std::size_t code = w % common_codes.size();
      const std::size_t available = facts.code_count[code];
      std::string target = "/fhir/Observation?code=" + loinc_token(code) + "&_count=50";
      if (w == 0) result.example = target;
      std::set<std::string> seen;
      for (std::size_t depth = 0; depth < o.pages; ++depth) {
        if (target.empty()) {
          if (seen.size() < available)
            throw query_failure("no next link after " + std::to_string(seen.size()) + " of " + std::to_string(available) +
                                " matches");
          break;
        }
        const std::size_t expected = std::min<std::size_t>(50, available - seen.size());
        drawn_query d{target, {expected, expected, 0, {}}};
        query_case q{"paging", "", false, {}};
        auto a = run_once(api, q, d, true);
        result.seconds_at_depth[depth].push_back(a.seconds);
        if (w == 0) result.deepest_target = target;
        for (const auto& url : a.summary.match_urls)
          if (!seen.insert(url).second) throw query_failure(target + ": " + url + " was already on an earlier page");
        target.clear();
        if (!a.summary.next.empty()) {
          if (!a.summary.next.starts_with(base_url))
            throw query_failure("next link outside the base: " + a.summary.next);
          target = "/fhir" + a.summary.next.substr(base_url.size());
        }
      }
    }
  } catch (const std::exception& e) {
    result.failure = e.what();
  }
  return result;
}

// --- plans ------------------------------------------------------------------------------------

// Receives the NOTICEs of one connection: auto_explain reports there at log_level notice, so the
// plans of exactly the statements the engine ran for a request come back to the bench.
class notice_collector : public pqxx::errorhandler {
 public:
  explicit notice_collector(pqxx::connection_base& c) : pqxx::errorhandler(c) {}
  bool operator()(const char message[]) noexcept override {
    try {
      std::lock_guard lock(mutex_);
      messages_ += message;
    } catch (...) {
      // Out of memory while keeping a plan: the plan is lost, the request is not.
    }
    return false;
  }
  std::string take() {
    std::lock_guard lock(mutex_);
    return std::exchange(messages_, {});
  }

 private:
  std::mutex mutex_;
  std::string messages_;
};

struct explained {
  std::string name;
  std::string target;
  std::string plans;
};

// Runs each query once more on a one-connection store with auto_explain (ANALYZE, BUFFERS) on
// and returns the plans of every statement it caused. Throws when auto_explain cannot be loaded.
std::vector<explained> explain_queries(const std::string& url, const std::vector<query_case>& cases,
                                       const std::set<std::string>& names, std::uint64_t seed,
                                       const std::string& deep_page_target) {
  gateway::resource_store store(url, 1, true);
  gateway::fhir_api_options api_options;
  api_options.base_url = std::string(base_url);
  gateway::fhir_api api(store, api_options);
  std::optional<notice_collector> notices;
  {
    auto c = store.acquire();
    notices.emplace(*c);
    pqxx::nontransaction tx(*c);
    tx.exec("LOAD 'auto_explain'");
    for (const char* set : {"SET auto_explain.log_min_duration = 0", "SET auto_explain.log_analyze = on",
                            "SET auto_explain.log_buffers = on", "SET auto_explain.log_timing = on",
                            "SET auto_explain.log_nested_statements = on", "SET auto_explain.log_level = notice",
                            "SET client_min_messages = notice"})
      tx.exec(set);
  }
  std::vector<explained> out;
  auto explain = [&](const std::string& name, const std::string& target) {
    api.handle(get(target));  // warm the cache: plans of a second run are the steady state
    notices->take();
    api.handle(get(target));
    out.push_back({name, target, notices->take()});
  };
  for (std::size_t i = 0; i < cases.size(); ++i) {
    if (!names.contains(cases[i].name)) continue;
    random_stream r(seed, 3000, i);
    explain(cases[i].name, cases[i].draw(r).target);
  }
  if (!deep_page_target.empty()) explain("paging (deepest page)", deep_page_target);
  notices.reset();
  return out;
}

// --- the report --------------------------------------------------------------------------------

std::string machine_line() {
  std::ifstream loadavg("/proc/loadavg");
  std::string one, five, fifteen;
  loadavg >> one >> five >> fifteen;
  return std::to_string(std::thread::hardware_concurrency()) + " cores, load average " + one + " " + five + " " +
         fifteen;
}

std::string server_version(gateway::resource_store& store) {
  auto c = store.acquire();
  pqxx::nontransaction tx(*c);
  return tx.exec1("SHOW server_version")[0].c_str();
}

std::string table_sizes(gateway::resource_store& store) {
  auto c = store.acquire();
  pqxx::nontransaction tx(*c);
  std::ostringstream out;
  out << "| table | rows (estimate) | size with indexes |\n|---|---:|---:|\n";
  for (const auto& row : tx.exec(
           "SELECT c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid) FROM pg_class c "
           "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') "
           "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' "
           "ORDER BY 3 DESC LIMIT 15"))
    out << "| " << row[0].c_str() << " | " << thousands(row[1].as<double>()) << " | "
        << fixed(row[2].as<double>() / 1048576.0, 1) << " MB |\n";
  out << "\nDatabase size: "
      << fixed(tx.exec1("SELECT pg_database_size(current_database())")[0].as<double>() / 1048576.0, 1) << " MB\n";
  return out.str();
}

std::string setting(gateway::resource_store& store, const std::string& name) {
  auto c = store.acquire();
  pqxx::nontransaction tx(*c);
  return tx.exec1("SHOW " + tx.quote_name(name))[0].c_str();
}

void vacuum_analyze(gateway::resource_store& store) {
  auto c = store.acquire();
  pqxx::nontransaction tx(*c);
  tx.exec("VACUUM ANALYZE");
}

struct indexing_cost {
  load_result without_index, with_index;
};

load_result load_sample(const options& o, const std::string& admin_url, const std::string& name, bool indexing,
                        std::size_t sample_patients) {
  recreate_database(admin_url, name);
  load_result r;
  {
    gateway::resource_store store(with_database(o.database_url, name), o.load_threads, indexing);
    store.migrate();
    r = load_dataset(store, o.data, 0, sample_patients, o.load_threads, true, [](std::size_t) {});
  }
  drop_database(admin_url, name);
  return r;
}

// The loaded data set is recorded with the schema version, so --reuse never queries a database
// written by an older indexer schema.
bool dataset_marker_matches(const std::string& url, const dataset_config& d) {
  pqxx::connection c(url);
  pqxx::nontransaction tx(c);
  if (tx.exec("SELECT 1 FROM pg_tables WHERE tablename = 'search_bench_dataset'").empty()) return false;
  return !tx.exec_params("SELECT 1 FROM search_bench_dataset WHERE patients = $1 AND observations_per_patient = $2 "
                         "AND seed = $3 AND schema_version = $4",
                         static_cast<long long>(d.patients), static_cast<long long>(d.observations_per_patient),
                         std::to_string(d.seed), gateway::resource_store::schema_version())
              .empty();
}

void write_dataset_marker(const std::string& url, const dataset_config& d) {
  pqxx::connection c(url);
  pqxx::work tx(c);
  tx.exec("CREATE TABLE search_bench_dataset (patients bigint, observations_per_patient bigint, seed text, "
          "schema_version int)");
  tx.exec_params("INSERT INTO search_bench_dataset VALUES ($1, $2, $3, $4)", static_cast<long long>(d.patients),
                 static_cast<long long>(d.observations_per_patient), std::to_string(d.seed),
                 gateway::resource_store::schema_version());
  tx.commit();
}

// The generated resources must be what a client could PUT: validated like fhir_api does.
void validate_samples(const dataset_config& config) {
  const auto p = patient_facts_of(config, 0);
  std::vector<std::pair<std::string, fhir::value>> samples{
      {"Organization", organization_resource(0)},
      {"Patient", patient_resource(p)},
      {"Encounter", encounter_resource(config, p, 0)},
      {"Observation", observation_resource(observation_facts_of(config, 0, 0, p.hospital))}};
  for (const auto& [type, resource] : samples) {
    fhir::issue_list issues;
    const bool valid = fhir::validate_resource(resource, issues, {.check_required_bindings = true, .expected_type = type});
    profiles::check_alliance_rules(resource, issues);
    if (!valid || issues.has_errors())
      throw std::runtime_error("generated " + type + " is not valid: " + fhir::to_json(fhir::to_operation_outcome(issues)));
  }
}

int run(const options& o) {
  std::ostringstream report;
  bool failed = false;
  const std::string admin_url = with_database(o.database_url, "postgres");
  const std::string main_url = with_database(o.database_url, o.database);
  const std::size_t total_resources = hospitals.size() + o.data.patients * resources_per_patient(o.data);
  validate_samples(o.data);

  const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  report << "# Search benchmark " << std::put_time(std::gmtime(&now), "%Y-%m-%d %H:%M UTC") << "\n\n";
  report << machine_line() << " at the start";
  if (!o.note.empty()) report << "; " << o.note;
  report << ".\n\nData set: " << thousands(static_cast<double>(o.data.patients)) << " patients × "
         << o.data.observations_per_patient << " Observations + " << encounters_per_patient
         << " Encounters each, " << hospitals.size() << " Organizations = "
         << thousands(static_cast<double>(total_resources)) << " resources (seed " << o.data.seed << ").\n\n";

  // 1. The write-time cost of search indexing, on a sample, with the server's default durability.
  if (o.index_sample > 0) {
    const std::size_t sample_patients =
        std::min(o.data.patients, (o.index_sample + o.data.observations_per_patient - 1) / o.data.observations_per_patient);
    std::cerr << "indexing cost: loading " << sample_patients << " patients without, then with search indexing\n";
    indexing_cost cost;
    cost.without_index = load_sample(o, admin_url, o.database + "_idx_off", false, sample_patients);
    cost.with_index = load_sample(o, admin_url, o.database + "_idx_on", true, sample_patients);
    report << "## Write-time cost of search indexing\n\n"
           << thousands(static_cast<double>(cost.with_index.resources)) << " resources (" << sample_patients
           << " patients with their Encounters and Observations), one PUT transaction each through resource_store, "
           << o.load_threads << " threads, the server's default synchronous_commit, fresh database each:\n\n"
           << "| search indexing | resources/s | time |\n|---|---:|---:|\n"
           << "| off | " << thousands(cost.without_index.per_second()) << " | " << fixed(cost.without_index.seconds, 1)
           << " s |\n| on | " << thousands(cost.with_index.per_second()) << " | " << fixed(cost.with_index.seconds, 1)
           << " s |\n\nWith indexing the load runs at "
           << fixed(100 * cost.with_index.per_second() / std::max(cost.without_index.per_second(), 1e-9), 0)
           << "% of the rate without.\n\n";
    std::cerr << "  off " << thousands(cost.without_index.per_second()) << "/s, on "
              << thousands(cost.with_index.per_second()) << "/s\n";
  }

  // 2. The full data set.
  bool reused = o.reuse && database_exists(admin_url, o.database) && dataset_marker_matches(main_url, o.data);
  if (!reused) {
    recreate_database(admin_url, o.database);
    const std::string load_url =
        o.durable_load ? main_url : with_query_parameter(main_url, "options=-c%20synchronous_commit%3Doff");
    gateway::resource_store store(load_url, o.load_threads, true);
    store.migrate();
    const std::string synchronous_commit = setting(store, "synchronous_commit");
    std::cerr << "loading " << thousands(static_cast<double>(total_resources)) << " resources\n";
    const auto start = clock_type::now();
    auto loaded = load_dataset(store, o.data, 0, o.data.patients, o.load_threads, true, [&](std::size_t done) {
      const double s = std::chrono::duration<double>(clock_type::now() - start).count();
      std::cerr << "  " << thousands(static_cast<double>(done)) << " (" << thousands(static_cast<double>(done) / s)
                << "/s)\n";
    });
    const auto analyze_start = clock_type::now();
    vacuum_analyze(store);
    const double analyze_seconds = std::chrono::duration<double>(clock_type::now() - analyze_start).count();
    write_dataset_marker(main_url, o.data);
    report << "## Loading the data set\n\n" << thousands(static_cast<double>(loaded.resources))
           << " resources with search indexing, " << o.load_threads << " threads, one transaction per resource"
           << " (synchronous_commit " << synchronous_commit << (o.durable_load ? "" : " for the bulk load") << "): "
           << fixed(loaded.seconds, 0) << " s, **" << thousands(loaded.per_second())
           << " resources/s**; VACUUM ANALYZE " << fixed(analyze_seconds, 1) << " s.\n\n";
  } else {
    report << "## Loading the data set\n\nReused the database loaded by an earlier run (--reuse).\n\n";
  }

  // 3. Queries.
  gateway::resource_store store(main_url, std::max(o.clients, 2u), true);
  store.migrate();
  report << "PostgreSQL " << server_version(store) << ".\n\n" << table_sizes(store) << "\n";
  gateway::fhir_api_options api_options;
  api_options.base_url = std::string(base_url);
  gateway::fhir_api api(store, api_options);

  std::cerr << "computing the expected results from the generator\n";
  const data_facts facts = facts_of(o.data);
  const auto cases = query_cases(o.data, facts);
  std::vector<case_result> results;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    if (!o.only.empty() && !o.only.contains(cases[i].name) && cases[i].name != "read") continue;
    std::cerr << "query " << cases[i].name << "\n";
    results.push_back(run_case(api, cases[i], o, i));
    if (!results.back().failure.empty()) {
      failed = true;
      std::cerr << "  FAILED: " << results.back().failure << "\n";
    } else {
      std::cerr << "  single p50 " << ms(results.back().single.p50) << ", " << o.clients << " clients "
                << thousands(results.back().concurrent.per_second) << "/s p50 " << ms(results.back().concurrent.p50)
                << " p99 " << ms(results.back().concurrent.p99) << "\n";
    }
  }
  const double baseline = results.empty() || !results.front().failure.empty() ? 0 : results.front().concurrent.per_second;

  report << "## Queries\n\nIn-process through `fhir_api::handle` (no HTTP), JSON responses. Single client: "
         << o.iterations << " runs with parameters drawn from the data, each response checked. Concurrent: "
         << o.clients << " client threads for " << fixed(o.duration, 0)
         << " s. Ratio: concurrent throughput relative to the GET-by-id baseline of the same run.\n\n"
         << "| query | matches (+included) | 1 client p50 | p99 | " << o.clients << " clients req/s | p50 | p99 | vs read |\n"
         << "|---|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const auto& r : results) {
    report << "| `" << r.query->name << "` " << cell(r.query->shape) << " | ";
    if (!r.failure.empty()) {
      report << "**FAILED** | | | | | | |\n";
      continue;
    }
    if (r.query->is_read) report << "1";
    else report << fixed(r.mean_matches, 1) << (r.mean_includes > 0 ? " (+" + fixed(r.mean_includes, 1) + ")" : "");
    report << " | " << ms(r.single.p50) << " | " << ms(r.single.p99) << " | " << thousands(r.concurrent.per_second)
           << " | " << ms(r.concurrent.p50) << " | " << ms(r.concurrent.p99) << " | "
           << (baseline > 0 ? fixed(100 * r.concurrent.per_second / baseline, 1) + "%" : "") << " |\n";
  }
  report << "\nExample requests:\n\n";
  for (const auto& r : results)
    if (!r.example.empty()) report << "- `" << r.query->name << "`: `" << r.example << "`\n";
  for (const auto& r : results)
    if (!r.failure.empty()) report << "\n**" << r.query->name << " failed**: " << r.failure << "\n";

  std::string deep_page_target;
  if (o.only.empty() || o.only.contains("paging")) {
    std::cerr << "query paging\n";
    auto paging = run_paging(api, o, facts);
    if (paging.failure.empty()) deep_page_target = paging.deepest_target;
    report << "\n## Paging deep into results\n\n`" << paging.example << "`, following next links " << o.pages
           << " pages deep, " << o.walks << " walks over different codes, one client. Median time per page:\n\n"
           << "| page | p50 | max |\n|---:|---:|---:|\n";
    for (std::size_t depth = 0; depth < paging.seconds_at_depth.size(); ++depth) {
      auto& times = paging.seconds_at_depth[depth];
      if (times.empty()) continue;
      if (!(depth == 0 || depth == 1 || (depth + 1) % 5 == 0 || depth + 1 == paging.seconds_at_depth.size())) continue;
      auto l = summarise(times, 0);
      report << "| " << depth + 1 << " | " << ms(l.p50) << " | " << ms(*std::max_element(times.begin(), times.end()))
             << " |\n";
    }
    if (!paging.failure.empty()) {
      failed = true;
      report << "\n**paging failed**: " << paging.failure << "\n";
      std::cerr << "  FAILED: " << paging.failure << "\n";
    }
  }

  std::cerr << "plans (auto_explain)\n";
  report << "\n## Plans\n\nEvery statement the engine ran for one request of each query (its second run), as "
            "`auto_explain` reports it with ANALYZE and BUFFERS.\n";
  try {
    // Only queries that passed: the plan of a failed one is not the plan of the query it names.
    std::set<std::string> passed;
    for (const auto& r : results)
      if (r.failure.empty() && !r.query->is_read) passed.insert(r.query->name);
    for (const auto& e : explain_queries(main_url, cases, passed, o.data.seed, deep_page_target))
      report << "\n### " << e.name << "\n\n`" << e.target << "`\n\n```\n"
             << (e.plans.empty() ? "(no plan reported)\n" : e.plans) << "```\n";
  } catch (const std::exception& e) {
    report << "\nNo plans: " << e.what() << "\n";
    std::cerr << "  no plans: " << e.what() << "\n";
  }

  if (failed) report << "\n**Some queries failed; their numbers are left out.**\n";
  std::cout << report.str();
  if (!o.report.empty()) {
    std::ofstream out(o.report, std::ios::trunc);
    out << report.str();
    if (!out) throw std::runtime_error("cannot write " + o.report);
  }
  return failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_options(argc, argv));
  } catch (const std::invalid_argument& e) {
    std::cerr << "bench_search: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "bench_search: " << e.what() << "\n";
    return 1;
  }
}
