// yilian: the single executable. Subcommands:
//   serve      run the gateway (embedded PostgreSQL unless --database-url)
//   import     bulk load NDJSON files (what $export writes)
//   postgres   start/stop a private PostgreSQL cluster (the test harness uses it)
//   validate   validate a FHIR resource file, print the OperationOutcome
//   convert    convert a FHIR resource file between JSON and XML; an HL7 v2 message to a Bundle + ACK
//   version
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "yilian/adapters/file_loader.hpp"
#include "yilian/adapters/hl7v2_ingest.hpp"
#include "yilian/adapters/mllp.hpp"
#include "yilian/adapters/mllp_client.hpp"
#include "yilian/fhir/fhirpath.hpp"
#include "yilian/fhir/json.hpp"
#include "yilian/fhir/validator.hpp"
#include "yilian/fhir/xml.hpp"
#include "yilian/gateway/bulk_data.hpp"
#include "yilian/gateway/embedded_postgres.hpp"
#include "yilian/gateway/fhir_api.hpp"
#include "yilian/gateway/http_server.hpp"
#include "yilian/gateway/metrics.hpp"
#include "yilian/gateway/resource_store.hpp"
#include "yilian/gateway/service.hpp"
#include "yilian/gateway/settings.hpp"
#include "yilian/gateway/subscriptions.hpp"
#include "yilian/gateway/worker_pool.hpp"
#include "yilian/mappers/hl7v2.hpp"
#include "yilian/mappers/hl7v2_ack.hpp"
#include "yilian/mappers/hl7v2_fhir.hpp"

namespace {

using namespace yilian;
constexpr const char* version = "0.1.0";

const char* usage =
    "Usage: yilian <command> [options]\n"
    "\n"
    "Commands:\n"
    "  serve [options]                     Run the FHIR gateway (yilian serve --help for the settings)\n"
    "  import FILE|FOLDER... [--database-url URL | --data-dir DIR]\n"
    "                                      Bulk load NDJSON files (a folder: its *.ndjson) like POST $import\n"
    "  postgres start --data-dir DIR [--url-file FILE]\n"
    "                                      Start a private PostgreSQL cluster under DIR and leave it running\n"
    "  postgres stop --data-dir DIR        Stop it\n"
    "  validate FILE [--type TYPE]         Validate a FHIR resource (JSON or XML); prints an OperationOutcome\n"
    "  fhirpath EXPRESSION FILE            Evaluate a FHIRPath expression on a resource (JSON or XML); prints\n"
    "                                      the result collection as JSON (type, path and value of each item)\n"
    "  convert fhir FILE --to json|xml [--pretty]\n"
    "                                      Convert a FHIR resource between JSON and XML\n"
    "  convert hl7v2 FILE [--charset CS]   Map an HL7 v2 message: the FHIR transaction Bundle (stdout) and\n"
    "                                      the ACK the gateway would answer (stderr); exit 0 only for AA\n"
    "  send HOST:PORT FILE... [--tls --ca FILE]\n"
    "                                      Send HL7 v2 message files over MLLP (one message per file), print\n"
    "                                      each ACK; exit 0 only when every ACK is AA\n"
    "  version                             Print the version\n";

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

bool looks_like_xml(const std::string& text) {
  auto first = text.find_first_not_of(" \t\r\n\xEF\xBB\xBF");
  return first != std::string::npos && text[first] == '<';
}

bool parse_any(const std::string& text, fhir::value& out, fhir::issue_list& issues) {
  return looks_like_xml(text) ? fhir::parse_xml(text, out, issues) : fhir::parse_json(text, out, issues);
}

// Reads a resource file (JSON or XML); on failure prints the OperationOutcome to stderr.
bool load_resource(const std::string& path, fhir::value& out) {
  fhir::issue_list issues;
  if (parse_any(read_file(path), out, issues)) return true;
  std::cerr << fhir::to_json(fhir::to_operation_outcome(issues), {.pretty = true}) << "\n";
  return false;
}

// Value of "--name VALUE" / "--name=VALUE" in args, removing it.
std::optional<std::string> take_option(std::vector<std::string>& args, std::string_view name) {
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == name && i + 1 < args.size()) {
      std::string v = args[i + 1];
      args.erase(args.begin() + static_cast<std::ptrdiff_t>(i), args.begin() + static_cast<std::ptrdiff_t>(i) + 2);
      return v;
    }
    if (args[i].starts_with(std::string(name) + "=")) {
      std::string v = args[i].substr(name.size() + 1);
      args.erase(args.begin() + static_cast<std::ptrdiff_t>(i));
      return v;
    }
  }
  return std::nullopt;
}

bool take_flag(std::vector<std::string>& args, std::string_view name) {
  for (std::size_t i = 0; i < args.size(); ++i)
    if (args[i] == name) {
      args.erase(args.begin() + static_cast<std::ptrdiff_t>(i));
      return true;
    }
  return false;
}

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

int cmd_validate(std::vector<std::string> args) {
  auto type = take_option(args, "--type");
  if (args.size() != 1) {
    std::cerr << "usage: yilian validate FILE [--type TYPE]\n";
    return 2;
  }
  fhir::value resource;
  fhir::issue_list issues;
  if (parse_any(read_file(args[0]), resource, issues))
    fhir::validate_resource(resource, issues, {.check_required_bindings = true, .expected_type = type ? *type : ""});
  std::cout << fhir::to_json(fhir::to_operation_outcome(issues), {.pretty = true}) << "\n";
  return issues.has_errors() ? 1 : 0;
}

// An HL7 v2 message file to the transaction Bundle the gateway would apply (stdout) and the ACK it
// would answer (stderr, one segment per line). Exit status 0 only for AA.
int convert_hl7v2(std::vector<std::string> args) {
  auto charset = take_option(args, "--charset");
  if (args.size() != 2) {
    std::cerr << "usage: yilian convert hl7v2 FILE [--charset GB18030]\n";
    return 2;
  }
  namespace v2 = mappers::hl7v2;
  auto parsed = v2::parse(read_file(args[1]), {.default_charset = charset.value_or("")});
  std::vector<v2::problem> problems = parsed.problems;
  v2::ack_code code = v2::ack_code::AR;
  if (parsed.parsed) {
    auto mapped = v2::map_to_fhir(*parsed.parsed);
    problems.insert(problems.end(), mapped.problems.begin(), mapped.problems.end());
    if (mapped.supported) {
      std::cout << fhir::to_json(mapped.bundle, {.pretty = true}) << "\n";
      bool errors = std::any_of(problems.begin(), problems.end(), [](const v2::problem& p) { return !p.is_warning; });
      code = errors ? v2::ack_code::AE : v2::ack_code::AA;
    }
  }
  std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d%H%M%S", std::localtime(&now));
  std::string control = parsed.parsed ? "ACK" + parsed.parsed->control_id() : "ACK";
  std::string ack = v2::make_ack(parsed.parsed ? &*parsed.parsed : nullptr, code, problems, control, stamp);
  std::replace(ack.begin(), ack.end(), '\r', '\n');
  std::cerr << ack;
  return code == v2::ack_code::AA ? 0 : 1;
}

int cmd_convert(std::vector<std::string> args) {
  if (!args.empty() && args[0] == "hl7v2") return convert_hl7v2(std::move(args));
  auto to = take_option(args, "--to");
  bool pretty = take_flag(args, "--pretty");
  if (args.size() != 2 || args[0] != "fhir" || !to || (*to != "json" && *to != "xml")) {
    std::cerr << "usage: yilian convert fhir FILE --to json|xml [--pretty] | yilian convert hl7v2 FILE\n";
    return 2;
  }
  fhir::value resource;
  if (!load_resource(args[1], resource)) return 1;
  fhir::issue_list issues;
  std::string out;
  if (*to == "json") {
    fhir::write_json(resource, out, {.pretty = pretty});
  } else if (!fhir::write_xml(resource, out, issues, {.pretty = pretty})) {
    std::cerr << fhir::to_json(fhir::to_operation_outcome(issues), {.pretty = true}) << "\n";
    return 1;
  }
  std::cout << out << "\n";
  return 0;
}

int cmd_fhirpath(std::vector<std::string> args) {
  if (args.size() != 2) {
    std::cerr << "usage: yilian fhirpath EXPRESSION FILE\n";
    return 2;
  }
  fhir::value resource;
  if (!load_resource(args[1], resource)) return 1;
  namespace fp = fhir::fhirpath;
  fp::collection result;
  try {
    fp::evaluate_options options;
    options.track_paths = true;
    result = fp::compile(args[0]).evaluate(resource, options);
  } catch (const fp::syntax_error& e) {
    std::cerr << args[0] << "\n" << std::string(e.position(), ' ') << "^ " << e.what() << "\n";
    return 1;
  } catch (const fp::evaluation_error& e) {
    std::cerr << "evaluation error: " << e.what() << "\n";
    return 1;
  }
  fhir::value out = fhir::value::make_array();
  for (const auto& item : result) {
    fhir::value entry = fhir::value::make_object();
    entry.set("type", fhir::value::make_string(item.type_name()));
    if (!item.path.empty()) entry.set("path", fhir::value::make_string(item.path));
    if (item.is_node() && item.node && (item.node->is_object() || item.node->is_array()))
      entry.set("value", *item.node);
    else if (auto text = item.to_string())
      entry.set("value", fhir::value::make_string(*text));
    out.push_back(std::move(entry));
  }
  std::cout << fhir::to_json(out, {.pretty = true}) << "\n";
  return 0;
}

int cmd_postgres(std::vector<std::string> args) {
  auto data_dir = take_option(args, "--data-dir");
  auto url_file = take_option(args, "--url-file");
  if (args.size() != 1 || !data_dir || (args[0] != "start" && args[0] != "stop")) {
    std::cerr << "usage: yilian postgres start|stop --data-dir DIR [--url-file FILE]\n";
    return 2;
  }
  if (args[0] == "stop") {
    gateway::embedded_postgres::stop_cluster(*data_dir);
    std::cout << "PostgreSQL under " << *data_dir << " stopped\n";
    return 0;
  }
  gateway::embedded_postgres_options options;
  options.data_dir = *data_dir;
  gateway::embedded_postgres pg(options);
  pg.start();
  pg.detach();
  std::cout << pg.url() << "\n";
  if (url_file) {
    std::ofstream out(*url_file, std::ios::trunc);
    out << pg.url() << "\n";
    if (!out) throw std::runtime_error("cannot write " + *url_file);
  }
  return 0;
}

// yilian import: NDJSON files (or folders of *.ndjson) bulk loaded like POST $import.
int cmd_import(std::vector<std::string> args) {
  auto database_url = take_option(args, "--database-url");
  auto data_dir = take_option(args, "--data-dir");
  if (args.empty()) {
    std::cerr << "usage: yilian import FILE|FOLDER... [--database-url URL | --data-dir DIR]\n";
    return 2;
  }
  std::vector<std::filesystem::path> files;
  for (const auto& arg : args) {
    if (!std::filesystem::is_directory(arg)) {
      files.emplace_back(arg);
      continue;
    }
    std::vector<std::filesystem::path> in_folder;
    for (const auto& e : std::filesystem::directory_iterator(arg))
      if (e.path().extension() == ".ndjson") in_folder.push_back(e.path());
    std::sort(in_folder.begin(), in_folder.end());
    files.insert(files.end(), in_folder.begin(), in_folder.end());
  }
  std::optional<gateway::embedded_postgres> pg;
  std::string url = database_url ? *database_url : "";
  if (url.empty())
    if (const char* env = std::getenv("YILIAN_DATABASE_URL")) url = env;
  if (url.empty()) {
    gateway::embedded_postgres_options options;
    options.data_dir = data_dir ? *data_dir : "./var";
    pg.emplace(options);
    pg->start();
    url = pg->url();
  }
  int status = 0;
  {
    gateway::resource_store store(url, 1);
    store.migrate();
    gateway::ndjson_importer importer(store, {});
    auto start = std::chrono::steady_clock::now();
    for (const auto& file : files) {
      std::ifstream in(file, std::ios::binary);
      if (!in) throw std::runtime_error("cannot read " + file.string());
      std::size_t line_no = 0;
      for (std::string line; std::getline(in, line);)
        importer.add_line(line, file.filename().string() + " line " + std::to_string(++line_no));
    }
    importer.finish();
    const auto& report = importer.report();
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (const auto& issue : report.issues.all()) std::cout << issue.location << ": " << issue.diagnostics << "\n";
    std::cout << report.lines << " lines from " << files.size() << " files: " << report.created << " created, "
              << report.updated << " updated, " << report.rejected << " rejected in " << seconds << " s" << std::endl;
    status = report.rejected == 0 ? 0 : 1;
  }
  if (pg) pg->stop();
  return status;
}

// Sends message files over MLLP, the way an HIS interface would, and prints each ACK.
int cmd_send(std::vector<std::string> args) {
  bool tls = std::find(args.begin(), args.end(), "--tls") != args.end();
  std::erase(args, std::string("--tls"));
  auto ca = take_option(args, "--ca");
  if (args.size() < 2) {
    std::cerr << "usage: yilian send HOST:PORT FILE... [--tls --ca FILE]\n";
    return 2;
  }
  auto colon = args[0].rfind(':');
  if (colon == std::string::npos) throw std::runtime_error("expected HOST:PORT, got " + args[0]);
  adapters::mllp_client_options options;
  options.tls = tls;
  options.tls_ca_file = ca.value_or("");
  adapters::mllp_client client(args[0].substr(0, colon),
                               static_cast<std::uint16_t>(std::stoi(args[0].substr(colon + 1))), options);
  bool all_accepted = true;
  for (std::size_t i = 1; i < args.size(); ++i) {
    std::string ack = client.exchange(read_file(args[i]));
    all_accepted &= ack.find("\rMSA|AA|") != std::string::npos || ack.find("\rMSA|CA|") != std::string::npos;
    std::replace(ack.begin(), ack.end(), '\r', '\n');
    std::cout << args[i] << ":\n" << ack << "\n";
  }
  return all_accepted ? 0 : 1;
}

int cmd_serve(const std::vector<std::string>& args) {
  bool help = false;
  gateway::settings s = gateway::parse_settings(args, help);
  if (help) {
    std::cout << gateway::settings_help();
    return 0;
  }
  // Signals are taken by a dedicated wait below: block them before any thread starts.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  std::optional<gateway::embedded_postgres> pg;
  std::string url = s.database_url;
  if (url.empty()) {
    gateway::embedded_postgres_options options;
    options.data_dir = s.data_dir;
    pg.emplace(options);
    std::cout << "Starting the embedded PostgreSQL under " << std::filesystem::absolute(s.data_dir).string()
              << " ..." << std::endl;
    pg->start();
    url = pg->url();
  }
  {
    gateway::resource_store store(url, s.workers);
    store.migrate();
    auto subscriptions = std::make_shared<gateway::subscription_participant>();
    store.add_participant(subscriptions);
    gateway::request_context ctx;
    for (const auto& path : s.load) {
      auto report = adapters::load_fhir_files(store, ctx, path);
      std::cout << "Loaded " << path << ": " << report.stored << " stored, " << report.unchanged << " unchanged, "
                << report.rejected << " rejected" << std::endl;
      for (const auto& e : report.errors) std::cout << "  rejected " << e << "\n";
    }

    gateway::metrics stats;
    gateway::fhir_api api(store, {.base_path = "/fhir", .base_url = s.base_url, .max_bundle_entries = s.max_bundle_entries});
    gateway::add_subscription_operations(api, store);
    gateway::bulk_export_options export_options;
    export_options.max_file_bytes = s.export_file_limit;
    export_options.expiry = s.export_expiry;
    gateway::register_everything(api, store);
    gateway::register_bulk_export(api, store, export_options);
    gateway::register_bulk_import(api, store);
    adapters::hl7v2_ingest_options hl7v2_options;
    hl7v2_options.parsing.default_charset = s.hl7v2_default_charset;
    for (const auto& [authority, system] : s.hl7v2_authorities) hl7v2_options.mapping.authority_systems[authority] = system;
    adapters::hl7v2_ingest hl7v2(store, api, hl7v2_options);
    hl7v2.register_operations(api);
    gateway::export_runner exports(url, export_options);
    gateway::gateway_service service(store, api, stats);
    gateway::worker_pool workers(s.workers);
    std::mutex log_mutex;
    bool access_log = s.access_log;
    auto observer = [&](const gateway::request_log_entry& e) {
      stats.record(e);
      if (!access_log) return;
      char line[96];
      std::snprintf(line, sizeof line, " %d %zuB %.2fms\n", e.status, e.response_bytes,
                    static_cast<double>(e.duration.count()) / 1000.0);
      std::string text = utc_now() + " " + e.remote_address + " \"" + e.method + " " + e.target + "\"" + line;
      std::lock_guard lock(log_mutex);
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
    };
    gateway::http_server server({.host = s.listen_host,
                                 .port = s.listen_port,
                                 .io_threads = s.io_threads,
                                 .body_limit = s.body_limit,
                                 .read_timeout = s.read_timeout,
                                 .idle_timeout = s.idle_timeout},
                                [&service](const gateway::http_request& r) { return service.handle(r); }, workers,
                                observer);
    auto websockets = std::make_shared<gateway::subscription_websockets>(store);
    server.add_websocket_endpoint(websockets->endpoint("/websocket"));
    server.start();
    exports.start();
    std::string host = s.listen_host.find(':') != std::string::npos ? "[" + s.listen_host + "]" : s.listen_host;
    std::string listen_url = "http://" + host + ":" + std::to_string(server.port()) + "/fhir";
    gateway::subscription_dispatcher_options notify_options;
    notify_options.base_url = s.base_url.empty() ? listen_url : s.base_url;
    notify_options.listen_database_url = url;
    gateway::subscription_dispatcher notifier(store, notify_options, subscriptions);
    notifier.attach_websockets(websockets);
    notifier.start();
    std::optional<adapters::mllp_server> mllp;
    if (s.mllp_enabled) {
      adapters::mllp_options mllp_options;
      mllp_options.host = s.mllp_host;
      mllp_options.port = s.mllp_port;
      mllp_options.max_message_bytes = s.mllp_max_message;
      mllp_options.tls_certificate_file = s.mllp_tls_cert;
      mllp_options.tls_private_key_file = s.mllp_tls_key;
      adapters::mllp_hooks hooks;
      hooks.oversize = [&](std::string_view start, std::size_t bytes, const adapters::mllp_peer&) {
        return hl7v2.transport_ack(start, mappers::hl7v2::ack_code::AR, mappers::hl7v2::error_code::value_too_long,
                                   "Message of " + std::to_string(bytes) + " bytes is larger than this gateway takes (" +
                                       std::to_string(s.mllp_max_message) + ")");
      };
      // The pipeline answers every data problem itself; this is a failure of the code (e.g. out of
      // memory): AE, nothing applied, the sender re-sends.
      hooks.handler_failure = [&](std::string_view message, std::string_view what, const adapters::mllp_peer&) {
        return hl7v2.transport_ack(message, mappers::hl7v2::ack_code::AE,
                                   mappers::hl7v2::error_code::application_internal_error,
                                   "Internal error (" + std::string(what) + "); nothing was applied, send the message again");
      };
      mllp.emplace(
          mllp_options,
          [&hl7v2](std::string_view message, const adapters::mllp_peer& peer) {
            return hl7v2.handle(message, peer.address).ack;
          },
          workers, hooks);
      mllp->start();
      std::cout << "HL7 v2 over MLLP" << (s.mllp_tls_cert.empty() ? "" : " (TLS)") << " on " << s.mllp_host << ":"
                << mllp->port() << std::endl;
    }
    std::cout << "Yilian " << version << " is listening on http://" << host << ":" << server.port() << "/fhir"
              << " (PostgreSQL: " << (pg ? "embedded, under " + s.data_dir : std::string("external")) << ")\n"
              << "Stop it with Ctrl-C or: kill -TERM " << getpid() << std::endl;
    int sig = 0;
    sigwait(&signals, &sig);
    std::cout << "Received " << (sig == SIGINT ? "SIGINT" : "SIGTERM")
              << ": finishing in-flight requests, then stopping" << std::endl;
    if (mllp) mllp->stop();  // in-flight messages get their ACK
    server.stop();
    server.wait();
    notifier.stop();
    exports.stop();
    workers.shutdown();
  }
  if (pg) {
    pg->stop();
    std::cout << "Embedded PostgreSQL stopped" << std::endl;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
    std::cout << usage;
    return args.empty() ? 2 : 0;
  }
  std::string command = args[0];
  args.erase(args.begin());
  try {
    if (command == "serve") return cmd_serve(args);
    if (command == "import") return cmd_import(args);
    if (command == "send") return cmd_send(args);
    if (command == "postgres") return cmd_postgres(args);
    if (command == "validate") return cmd_validate(args);
    if (command == "convert") return cmd_convert(args);
    if (command == "fhirpath") return cmd_fhirpath(args);
    if (command == "version" || command == "--version") {
      std::cout << "yilian " << version << " (FHIR R4 4.0.1)\n";
      return 0;
    }
    std::cerr << "yilian: unknown command '" << command << "'\n\n" << usage;
    return 2;
  } catch (const std::invalid_argument& e) {
    std::cerr << "yilian " << command << ": " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "yilian " << command << ": " << e.what() << "\n";
    return 1;
  }
}
