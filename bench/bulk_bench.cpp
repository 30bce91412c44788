// Bulk data benchmark: the search benchmark's generated data set (patients with Encounters and
// Observations, hospitals) as NDJSON, loaded with POST $import into an empty database, exported
// with $export (kick-off, the runner, every file downloaded), and the export loaded again into a
// second empty database, which must then hold the same number of resources. Requests go through
// fhir_api::handle in-process; the export runner is the one `yilian serve` runs.
//
//   bench_bulk --database-url URL [--patients 2000] [--observations 20] [--file-limit 64M]
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <pqxx/pqxx>
#include <stdexcept>
#include <string>

#include "bench_database.hpp"
#include "search_dataset.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/gateway/bulk_data.hpp"
#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/resource_store.hpp"

using namespace yilian;
using clock_type = std::chrono::steady_clock;

namespace {

using bench::recreate_database;
using bench::with_database;

struct options {
  std::string database_url;
  bench::dataset_config data{.patients = 2000, .observations_per_patient = 20};
  std::size_t file_limit = 64 * 1024 * 1024;
};

const char* usage =
    "usage: bench_bulk --database-url URL [--patients N] [--observations N] [--file-limit BYTES]\n"
    "  URL names any database of the cluster; bench_bulk creates (and drops) yilian_bulk_source and\n"
    "  yilian_bulk_copy there.\n";

options parse(int argc, char** argv) {
  options o;
  if (const char* env = std::getenv("YILIAN_DATABASE_URL")) o.database_url = env;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + ": missing value");
      return argv[++i];
    };
    if (a == "--database-url")
      o.database_url = value();
    else if (a == "--patients")
      o.data.patients = std::stoul(value());
    else if (a == "--observations")
      o.data.observations_per_patient = std::stoul(value());
    else if (a == "--file-limit")
      o.file_limit = std::stoul(value());
    else if (a == "--help" || a == "-h") {
      std::cout << usage;
      std::exit(0);
    } else
      throw std::invalid_argument("unknown option " + a + "\n" + usage);
  }
  if (o.database_url.empty()) throw std::invalid_argument(std::string("no --database-url\n") + usage);
  return o;
}

std::string generate_ndjson(const bench::dataset_config& config, std::size_t& resources) {
  std::string out;
  auto add = [&](const fhir::value& v) {
    fhir::write_json(v, out);
    out += '\n';
    ++resources;
  };
  for (std::size_t h = 0; h < bench::hospitals.size(); ++h) add(bench::organization_resource(h));
  for (std::size_t i = 0; i < config.patients; ++i) {
    const auto p = bench::patient_facts_of(config, i);
    add(bench::patient_resource(p));
    for (std::size_t j = 0; j < bench::encounters_per_patient; ++j) add(bench::encounter_resource(config, p, j));
    for (std::size_t k = 0; k < config.observations_per_patient; ++k)
      add(bench::observation_resource(bench::observation_facts_of(config, i, k, p.hospital)));
  }
  return out;
}

gateway::fhir_api_options api_options() {
  gateway::fhir_api_options o;
  o.base_url = "http://bench.local/fhir";
  return o;
}

gateway::http_response call(const gateway::fhir_api& api, std::string method, std::string target,
                            std::vector<gateway::http_header> headers = {}, std::string body = {}) {
  gateway::http_request req;
  req.method = std::move(method);
  req.target = std::move(target);
  req.headers = std::move(headers);
  req.body = std::move(body);
  return api.handle(req);
}

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

// POST $import; returns the seconds taken and checks that every line was created.
double timed_import(const gateway::fhir_api& api, std::string ndjson, std::size_t lines) {
  auto start = clock_type::now();
  auto res = call(api, "POST", "/fhir/$import", {{"Content-Type", "application/fhir+ndjson"}}, std::move(ndjson));
  double seconds = seconds_since(start);
  std::string expected = std::to_string(lines) + " lines: " + std::to_string(lines) + " created";
  if (res.status != 200 || res.body.find(expected) == std::string::npos)
    throw std::runtime_error("$import failed: " + std::to_string(res.status) + " " + res.body.substr(0, 2000));
  return seconds;
}

long max_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024;
}

void report(const char* what, std::size_t resources, double seconds, const std::string& extra = {}) {
  std::cout << "| " << std::left << std::setw(34) << what << " | " << std::right << std::setw(8) << resources << " | "
            << std::setw(8) << std::fixed << std::setprecision(2) << seconds << " | " << std::setw(9)
            << static_cast<long>(static_cast<double>(resources) / seconds) << " | " << extra << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  try {
    options o = parse(argc, argv);
    const std::string admin = with_database(o.database_url, "postgres");
    recreate_database(admin, "yilian_bulk_source", true);
    recreate_database(admin, "yilian_bulk_copy", true);
    const std::string source_url = with_database(o.database_url, "yilian_bulk_source");
    const std::string copy_url = with_database(o.database_url, "yilian_bulk_copy");

    std::size_t resources = 0;
    std::string ndjson = generate_ndjson(o.data, resources);
    std::cout << "Data set: " << o.data.patients << " patients, " << o.data.observations_per_patient
              << " Observations and " << bench::encounters_per_patient << " Encounters each, "
              << bench::hospitals.size() << " Organizations: " << resources << " resources, "
              << ndjson.size() / (1024 * 1024) << " MB of NDJSON\n\n";
    std::cout << "| step                               | resources | seconds | resources/s | notes\n"
              << "|------------------------------------|----------:|--------:|------------:|------\n";

    gateway::bulk_export_options export_options;
    export_options.max_file_bytes = o.file_limit;
    gateway::resource_store source(source_url, 2);
    source.migrate();
    gateway::fhir_api source_api(source, api_options());
    gateway::register_bulk_import(source_api, source);
    gateway::register_bulk_export(source_api, source, export_options);
    // The first lines again, one resource_store::update (one transaction) each: what a client
    // sending one PUT per resource costs the store, without HTTP.
    std::size_t single_count = std::min<std::size_t>(resources, 5000);
    std::size_t cut = 0;
    for (std::size_t n = 0; n < single_count; ++n) cut = ndjson.find('\n', cut) + 1;
    std::string single_lines = ndjson.substr(0, cut);

    double load_seconds = timed_import(source_api, std::move(ndjson), resources);
    report("$import (generated NDJSON)", resources, load_seconds, "validation, store, search indexing");

    recreate_database(admin, "yilian_bulk_single", true);
    {
      gateway::resource_store single(with_database(o.database_url, "yilian_bulk_single"), 1);
      single.migrate();
      const gateway::request_context context;
      auto start = clock_type::now();
      for (std::size_t at = 0; at < single_lines.size();) {
        auto end = single_lines.find('\n', at);
        fhir::value resource;
        fhir::issue_list issues;
        fhir::parse_json(std::string_view(single_lines).substr(at, end - at), resource, issues);
        std::string type = resource.find("resourceType")->text();
        std::string id = resource.find("id")->text();
        single.update(context, type, id, std::move(resource));
        at = end + 1;
      }
      report("one update per resource (baseline)", single_count, seconds_since(start), "no validation: store only");
    }
    recreate_database(admin, "yilian_bulk_single", false);

    auto kickoff = call(source_api, "GET", "/fhir/$export", {{"Prefer", "respond-async"}});
    if (kickoff.status != 202) throw std::runtime_error("$export kick-off: " + kickoff.body);
    std::string status_path(kickoff.header("Content-Location").substr(std::string("http://bench.local").size()));
    gateway::export_runner runner(source_url, export_options);
    long rss_before = max_rss_mb();
    auto start = clock_type::now();
    if (!runner.run_once()) throw std::runtime_error("the runner found no job");
    double export_seconds = seconds_since(start);
    long rss_after = max_rss_mb();
    auto manifest_response = call(source_api, "GET", status_path);
    if (manifest_response.status != 200) throw std::runtime_error("$export status: " + manifest_response.body);
    fhir::value manifest;
    fhir::issue_list issues;
    fhir::parse_json(manifest_response.body, manifest, issues);
    std::string exported;
    std::size_t files = 0;
    start = clock_type::now();
    for (const auto& file : manifest.find("output")->items()) {
      auto res = call(source_api, "GET", file.find("url")->text().substr(std::string("http://bench.local").size()));
      if (res.status != 200) throw std::runtime_error("download: " + res.body);
      exported += res.body;
      ++files;
    }
    double download_seconds = seconds_since(start);
    std::size_t exported_lines = static_cast<std::size_t>(std::count(exported.begin(), exported.end(), '\n'));
    if (exported_lines != resources)
      throw std::runtime_error("exported " + std::to_string(exported_lines) + " of " + std::to_string(resources));
    report("$export (runner, snapshot to files)", exported_lines, export_seconds,
           std::to_string(files) + " files, peak RSS " + std::to_string(rss_before) + " -> " +
               std::to_string(rss_after) + " MB");
    report("download every file", exported_lines, download_seconds,
           std::to_string(exported.size() / (1024 * 1024)) + " MB");

    gateway::resource_store copy(copy_url, 2);
    copy.migrate();
    gateway::fhir_api copy_api(copy, api_options());
    gateway::register_bulk_import(copy_api, copy);
    double reload_seconds = timed_import(copy_api, std::move(exported), exported_lines);
    report("$import of the export (empty db)", exported_lines, reload_seconds, "round trip complete");

    recreate_database(admin, "yilian_bulk_source", false);
    recreate_database(admin, "yilian_bulk_copy", false);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "bench_bulk: " << e.what() << "\n";
    return 1;
  }
}
