// HL7 v2 ingest benchmark: LIS result messages (ORU^R01 v2.4, one per generated patient of the
// search data set, with 居民身份证号 and `--results` OBX each) measured at three depths, each next
// to its ceiling in the same run:
//   1. parse + map to a FHIR Bundle, one thread, no database — vs scanning the same bytes for
//      segment separators (reading the input);
//   2. the ingest pipeline (parse, dedupe, map, one transaction with the message log) called
//      directly from `--threads` threads — vs the transaction Bundles of the same resources posted
//      to the FHIR API (the store's own cost);
//   3. over MLLP from `--connections` senders into `yilian serve`'s listener and pipeline.
//
//   bench_hl7v2_ingest --database-url URL [--messages 2000] [--results 5] [--threads 2] [--connections 4]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <pqxx/pqxx>
#include <thread>
#include <vector>

#include "bench_database.hpp"
#include "search_dataset.hpp"
#include "yilian/adapters/hl7v2_ingest.hpp"
#include "yilian/adapters/mllp.hpp"
#include "yilian/adapters/mllp_client.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/resource_store.hpp"
#include "yilian/gateway/worker_pool.hpp"
#include "yilian/mappers/hl7v2.hpp"
#include "yilian/mappers/hl7v2_fhir.hpp"

using namespace yilian;
using clock_type = std::chrono::steady_clock;

namespace {

using bench::recreate_database;
using bench::with_database;

struct options {
  std::string database_url;
  std::size_t messages = 2000;
  std::size_t results = 5;
  unsigned threads = 2;
  unsigned connections = 4;
};

options parse_args(int argc, char** argv) {
  options o;
  if (const char* env = std::getenv("YILIAN_DATABASE_URL")) o.database_url = env;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + ": missing value");
      return argv[++i];
    };
    if (a == "--database-url") o.database_url = value();
    else if (a == "--messages") o.messages = std::stoul(value());
    else if (a == "--results") o.results = std::stoul(value());
    else if (a == "--threads") o.threads = static_cast<unsigned>(std::stoul(value()));
    else if (a == "--connections") o.connections = static_cast<unsigned>(std::stoul(value()));
    else {
      std::cout << "usage: bench_hl7v2_ingest --database-url URL [--messages N] [--results N] [--threads N] "
                   "[--connections N]\n  creates and drops yilian_hl7v2_bench on that cluster\n";
      std::exit(a == "--help" ? 0 : 2);
    }
  }
  if (o.database_url.empty()) throw std::invalid_argument("no --database-url");
  return o;
}

// One ORU^R01 per patient: the patient's identity from the data set, `results` lab values.
std::vector<std::string> make_messages(const options& o, const char* control_prefix) {
  bench::dataset_config config{.patients = o.messages, .observations_per_patient = o.results};
  std::vector<std::string> out;
  for (std::size_t i = 0; i < o.messages; ++i) {
    auto p = bench::patient_facts_of(config, i);
    std::string birth = p.birth_date.substr(0, 4) + p.birth_date.substr(5, 2) + p.birth_date.substr(8, 2);
    std::string n = std::to_string(i);
    std::string m = "MSH|^~\\&|LIS|HOSP-" + std::to_string(p.hospital + 1) + "|YILIAN|ALLIANCE|20261124093000||ORU^R01|" +
                    control_prefix + n + "|P|2.4|||AL|NE||UNICODE UTF-8\r";
    m += "PID|1||" + p.national_id + "^^^^ID~" + p.outpatient_number + "^^^HOSP-" + std::to_string(p.hospital + 1) +
         "^MR||" + p.family + "^" + p.given + "||" + birth + "|" + (p.male ? "M" : "F") + "\r";
    m += "OBR|1|ORD-" + n + "|FIL-" + n + "^LIS|24326-1^Electrolytes^LN|||20261124080000||||||||||||||||CH|F\r";
    for (std::size_t k = 0; k < o.results; ++k) {
      auto f = bench::observation_facts_of(config, i, k, p.hospital);
      const auto& code = bench::code_at(f.code);
      m += "OBX|" + std::to_string(k + 1) + "|NM|" + std::string(code.loinc) + "^" + std::string(code.display) + "^LN||" +
           f.value + "|" + std::string(code.ucum) + "|" + bench::format_decimal(code.low, code.decimals) + "-" +
           bench::format_decimal(code.high, code.decimals) + "|N|||F|||20261124090000\r";
    }
    out.push_back(std::move(m));
  }
  return out;
}

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

void row(const std::string& what, std::size_t messages, double seconds, double ceiling_rate) {
  double rate = static_cast<double>(messages) / seconds;
  std::cout << "| " << std::left << std::setw(58) << what << " | " << std::right << std::setw(9)
            << static_cast<long>(rate) << " | ";
  if (ceiling_rate > 0) std::cout << std::fixed << std::setprecision(3) << rate / ceiling_rate;
  else std::cout << "ceiling";
  std::cout << " |\n";
}

// Runs `work(i)` for i in [0, count) from `threads` threads; returns seconds.
template <class F>
double in_parallel(std::size_t count, unsigned threads, F&& work) {
  std::atomic<std::size_t> next{0};
  auto start = clock_type::now();
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t)
    pool.emplace_back([&] {
      for (std::size_t i; (i = next++) < count;) work(i);
    });
  for (auto& t : pool) t.join();
  return seconds_since(start);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    options o = parse_args(argc, argv);
    const std::string admin = with_database(o.database_url, "postgres");
    const std::string url = with_database(o.database_url, "yilian_hl7v2_bench");
    auto messages = make_messages(o, "B-");
    std::size_t bytes = 0;
    for (const auto& m : messages) bytes += m.size();
    std::cout << o.messages << " ORU^R01 messages (" << o.results << " results each, " << bytes / 1024 << " KiB)\n\n"
              << "| step                                                       | messages/s | vs ceiling |\n"
              << "|------------------------------------------------------------|-----------:|-----------:|\n";

    // 1. Parse + map, one thread.
    std::size_t separators = 0;
    auto start = clock_type::now();
    for (int pass = 0; pass < 20; ++pass)
      for (const auto& m : messages)
        for (const char* p = m.data(); (p = static_cast<const char*>(std::memchr(p, '\r', m.data() + m.size() - p)));
             ++p)
          ++separators;
    double scan_rate = static_cast<double>(messages.size() * 20) / seconds_since(start);
    row("reading the bytes (memchr for segment ends), 1 thread", messages.size() * 20,
        static_cast<double>(messages.size() * 20) / scan_rate, 0);
    std::size_t entries = 0;
    start = clock_type::now();
    for (const auto& m : messages) {
      auto parsed = mappers::hl7v2::parse(m);
      auto mapped = mappers::hl7v2::map_to_fhir(*parsed.parsed);
      if (mapped.has_errors()) throw std::runtime_error("mapping failed: " + mapped.problems.front().message);
      entries += mapped.bundle.find("entry")->items().size();
    }
    double map_seconds = seconds_since(start);
    row("parse + map to a transaction Bundle (validated), 1 thread", messages.size(), map_seconds, scan_rate);

    // 2. The pipeline into PostgreSQL vs the same Bundles posted to the FHIR API.
    recreate_database(admin, "yilian_hl7v2_bench", true);
    double bundle_rate = 0;
    {
      gateway::resource_store store(url, o.threads);
      store.migrate();
      gateway::fhir_api api(store, {});
      std::vector<std::string> bundles;
      for (const auto& m : messages)
        bundles.push_back(fhir::to_json(mappers::hl7v2::map_to_fhir(*mappers::hl7v2::parse(m).parsed).bundle));
      double seconds = in_parallel(bundles.size(), o.threads, [&](std::size_t i) {
        gateway::http_request req;
        req.method = "POST";
        req.target = "/fhir";
        req.headers = {{"Content-Type", "application/fhir+json"}};
        req.body = bundles[i];
        if (api.handle(req).status != 200) throw std::runtime_error("transaction failed");
      });
      bundle_rate = static_cast<double>(bundles.size()) / seconds;
      row("the mapped Bundles POSTed to the FHIR API (" + std::to_string(o.threads) + " threads)", bundles.size(),
          seconds, 0);
    }
    recreate_database(admin, "yilian_hl7v2_bench", true);
    {
      gateway::resource_store store(url, o.threads);
      store.migrate();
      gateway::fhir_api api(store, {});
      adapters::hl7v2_ingest ingest(store, api);
      double seconds = in_parallel(messages.size(), o.threads, [&](std::size_t i) {
        auto outcome = ingest.handle(messages[i]);
        if (outcome.ack_code != "AA") throw std::runtime_error("not accepted: " + outcome.ack);
      });
      row("ingest pipeline, direct (" + std::to_string(o.threads) + " threads)", messages.size(), seconds, bundle_rate);
    }

    // 3. Over MLLP.
    recreate_database(admin, "yilian_hl7v2_bench", true);
    {
      gateway::resource_store store(url, o.threads);
      store.migrate();
      gateway::fhir_api api(store, {});
      adapters::hl7v2_ingest ingest(store, api);
      gateway::worker_pool workers(o.threads);
      adapters::mllp_options mllp_options;
      mllp_options.port = 0;
      adapters::mllp_server server(
          mllp_options, [&](std::string_view m, const adapters::mllp_peer&) { return ingest.handle(m).ack; }, workers);
      server.start();
      std::atomic<std::size_t> next{0};
      start = clock_type::now();
      std::vector<std::thread> senders;
      for (unsigned c = 0; c < o.connections; ++c)
        senders.emplace_back([&] {
          adapters::mllp_client client("127.0.0.1", server.port());
          for (std::size_t i; (i = next++) < messages.size();)
            if (client.exchange(messages[i]).find("MSA|AA") == std::string::npos)
              throw std::runtime_error("not accepted over MLLP");
        });
      for (auto& s : senders) s.join();
      double seconds = seconds_since(start);
      server.stop();
      server.wait();
      workers.shutdown();
      row("over MLLP, " + std::to_string(o.connections) + " connections, " + std::to_string(o.threads) + " workers",
          messages.size(), seconds, bundle_rate);
    }
    recreate_database(admin, "yilian_hl7v2_bench", false);
    std::cout << "\n" << entries / messages.size() << " Bundle entries per message; 'vs ceiling' of the database rows is\n"
              << "relative to posting the already mapped Bundles (the store's cost without parsing, mapping,\n"
              << "duplicate check and message log). " << separators << " segment ends scanned.\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "bench_hl7v2_ingest: " << e.what() << "\n";
    return 1;
  }
}
