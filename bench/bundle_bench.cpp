// Transaction ingest benchmark: the search benchmark's generated alliance data (patients with
// Encounters and Observations) pushed as transaction Bundles of PUT entries (ids from the sending
// system, as a HIS pushes), through fhir_api::handle in-process from several threads, into an
// empty database; once with search indexing and once without. The ceiling is PostgreSQL's own
// COPY of the same resource rows (history + current) into the same tables, in the same run.
//
//   bench_bundles --database-url URL [--patients 1000] [--observations 20] [--threads 2]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <pqxx/pqxx>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "bench_database.hpp"
#include "search_dataset.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/resource_store.hpp"

using namespace yilian;
using clock_type = std::chrono::steady_clock;

namespace {

using bench::recreate_database;
using bench::with_database;

struct options {
  std::string database_url;
  bench::dataset_config data{.patients = 1000, .observations_per_patient = 20};
  unsigned threads = 2;
};

const char* usage =
    "usage: bench_bundles --database-url URL [--patients N] [--observations N] [--threads N]\n"
    "  URL names any database of the cluster; bench_bundles creates and drops yilian_bundle_bench there.\n";

options parse(int argc, char** argv) {
  options o;
  if (const char* env = std::getenv("YILIAN_DATABASE_URL")) o.database_url = env;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + ": missing value");
      return argv[++i];
    };
    if (a == "--database-url") o.database_url = value();
    else if (a == "--patients") o.data.patients = std::stoul(value());
    else if (a == "--observations") o.data.observations_per_patient = std::stoul(value());
    else if (a == "--threads") o.threads = static_cast<unsigned>(std::stoul(value()));
    else if (a == "--help" || a == "-h") {
      std::cout << usage;
      std::exit(0);
    } else throw std::invalid_argument("unknown option " + a + "\n" + usage);
  }
  if (o.database_url.empty()) throw std::invalid_argument(std::string("no --database-url\n") + usage);
  if (o.threads == 0) o.threads = 1;
  return o;
}

// Every resource of the data set, in an order where a patient's resources follow it.
std::vector<fhir::value> generate(const bench::dataset_config& config) {
  std::vector<fhir::value> out;
  for (std::size_t h = 0; h < bench::hospitals.size(); ++h) out.push_back(bench::organization_resource(h));
  for (std::size_t i = 0; i < config.patients; ++i) {
    const auto p = bench::patient_facts_of(config, i);
    out.push_back(bench::patient_resource(p));
    for (std::size_t j = 0; j < bench::encounters_per_patient; ++j) out.push_back(bench::encounter_resource(config, p, j));
    for (std::size_t k = 0; k < config.observations_per_patient; ++k)
      out.push_back(bench::observation_resource(bench::observation_facts_of(config, i, k, p.hospital)));
  }
  return out;
}

// Transaction Bundles of `size` PUT entries each, serialised as a client would send them.
std::vector<std::string> make_bundles(const std::vector<fhir::value>& resources, std::size_t size) {
  std::vector<std::string> bundles;
  for (std::size_t start = 0; start < resources.size(); start += size) {
    fhir::value bundle = fhir::value::make_object();
    bundle.set("resourceType", fhir::value::make_string("Bundle"));
    bundle.set("type", fhir::value::make_string("transaction"));
    fhir::value& entries = bundle.set("entry", fhir::value::make_array());
    for (std::size_t i = start; i < std::min(resources.size(), start + size); ++i) {
      const fhir::value& r = resources[i];
      std::string url = r.find("resourceType")->text() + "/" + r.find("id")->text();
      fhir::value entry = fhir::value::make_object();
      entry.set("fullUrl", fhir::value::make_string("http://his.example/fhir/" + url));
      entry.set("resource", r);
      fhir::value request = fhir::value::make_object();
      request.set("method", fhir::value::make_string("PUT"));
      request.set("url", fhir::value::make_string(url));
      entry.set("request", std::move(request));
      entries.push_back(std::move(entry));
    }
    bundles.push_back(fhir::to_json(bundle));
  }
  return bundles;
}

// Posts every Bundle from `threads` threads; returns seconds.
double post_all(const gateway::fhir_api& api, const std::vector<std::string>& bundles, unsigned threads) {
  std::atomic<std::size_t> next{0};
  std::atomic<bool> failed{false};
  std::string failure;
  auto start = clock_type::now();
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < threads; ++t)
    workers.emplace_back([&] {
      for (std::size_t i; !failed && (i = next++) < bundles.size();) {
        gateway::http_request req;
        req.method = "POST";
        req.target = "/fhir";
        req.headers = {{"Content-Type", "application/fhir+json"}, {"Prefer", "return=minimal"}};
        req.body = bundles[i];
        auto res = api.handle(req);
        if (res.status != 200 && !failed.exchange(true)) failure = res.body.substr(0, 2000);
      }
    });
  for (auto& w : workers) w.join();
  if (failed) throw std::runtime_error("a transaction failed: " + failure);
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

// The ceiling: COPY of the rows Yilian writes per resource (a history row and a current row)
// into the same tables of an empty database, from one connection per thread.
double copy_ceiling(const std::string& url, const std::vector<fhir::value>& resources, unsigned threads) {
  const std::string instant = "2026-11-24T00:00:00.000+00:00";
  std::vector<std::string> bodies;
  bodies.reserve(resources.size());
  for (const auto& r : resources) bodies.push_back(fhir::to_json(r));
  auto start = clock_type::now();
  std::vector<std::thread> workers;
  for (unsigned t = 0; t < threads; ++t)
    workers.emplace_back([&, t] {
      pqxx::connection c(url);
      pqxx::work tx(c);
      {
        pqxx::stream_to versions(tx, "resource_version",
                                 std::vector<std::string>{"tenant", "res_type", "res_id", "version", "last_updated",
                                                          "deleted", "method", "compartment", "body"});
        for (std::size_t i = t; i < resources.size(); i += threads)
          versions << std::make_tuple(std::string("default"), resources[i].find("resourceType")->text(),
                                      resources[i].find("id")->text(), 1, instant, false, std::string("PUT"),
                                      std::string(), bodies[i]);
        versions.complete();
      }
      {
        pqxx::stream_to current(tx, "resource_current",
                                std::vector<std::string>{"tenant", "res_type", "res_id", "version", "last_updated",
                                                         "deleted", "compartment", "body"});
        for (std::size_t i = t; i < resources.size(); i += threads)
          current << std::make_tuple(std::string("default"), resources[i].find("resourceType")->text(),
                                     resources[i].find("id")->text(), 1, instant, false, std::string(), bodies[i]);
        current.complete();
      }
      tx.commit();
    });
  for (auto& w : workers) w.join();
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

void report(const std::string& what, std::size_t resources, double seconds, double ceiling_rate) {
  double rate = static_cast<double>(resources) / seconds;
  std::cout << "| " << std::left << std::setw(44) << what << " | " << std::right << std::setw(9) << resources << " | "
            << std::setw(7) << std::fixed << std::setprecision(2) << seconds << " | " << std::setw(11)
            << static_cast<long>(rate) << " | " << std::setw(13);
  if (ceiling_rate > 0) std::cout << std::setprecision(3) << rate / ceiling_rate;
  else std::cout << "1 (ceiling)";
  std::cout << " |\n";
}

}  // namespace

int main(int argc, char** argv) {
  try {
    options o = parse(argc, argv);
    const std::string admin = with_database(o.database_url, "postgres");
    const std::string url = with_database(o.database_url, "yilian_bundle_bench");
    auto resources = generate(o.data);
    std::cout << "Data set: " << o.data.patients << " patients with " << bench::encounters_per_patient
              << " Encounters and " << o.data.observations_per_patient << " Observations each: " << resources.size()
              << " resources; " << o.threads << " client threads\n\n";
    std::cout << "| ingest                                       | resources | seconds | resources/s | vs COPY |\n"
              << "|----------------------------------------------|----------:|--------:|------------:|--------:|\n";

    auto fresh_store = [&](bool indexing) {
      recreate_database(admin, "yilian_bundle_bench", true);
      auto store = std::make_unique<gateway::resource_store>(url, o.threads, indexing);
      store->migrate();
      return store;
    };
    double ceiling_rate = 0;
    {
      auto store = fresh_store(false);  // the schema only
      double seconds = copy_ceiling(url, resources, o.threads);
      ceiling_rate = static_cast<double>(resources.size()) / seconds;
      report("PostgreSQL COPY of the resource rows", resources.size(), seconds, 0);
    }
    for (std::size_t size : {std::size_t{100}, std::size_t{1000}}) {
      auto bundles = make_bundles(resources, size);
      for (bool indexing : {true, false}) {
        auto store = fresh_store(indexing);
        gateway::fhir_api_options api_options;
        api_options.base_url = "http://bench.local/fhir";
        gateway::fhir_api api(*store, api_options);
        double seconds = post_all(api, bundles, o.threads);
        report("transaction Bundles of " + std::to_string(size) + (indexing ? ", search indexed" : ", no search index"),
               resources.size(), seconds, ceiling_rate);
      }
    }
    recreate_database(admin, "yilian_bundle_bench", false);
    std::cout << "\nEach Bundle is parsed, validated (structure, bindings, alliance rules), its entries run as PUTs in\n"
                 "one PostgreSQL transaction; 'search indexed' also writes every search parameter's index rows.\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "bench_bundles: " << e.what() << "\n";
    return 1;
  }
}
