#include "yilian/gateway/settings.hpp"

#include <charconv>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <stdexcept>

namespace yilian::gateway {
namespace {

struct setting_entry {
  setting_descriptor descriptor;
  std::function<void(settings&, const std::string&)> apply;
};

unsigned long long parse_number(std::string_view flag, const std::string& text, unsigned long long max) {
  unsigned long long v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc{} || p != text.data() + text.size() || v > max)
    throw std::invalid_argument(std::string(flag) + ": expected a number up to " + std::to_string(max) + ", got '" +
                                text + "'");
  return v;
}

std::size_t parse_size(std::string_view flag, std::string text) {
  unsigned long long factor = 1;
  if (!text.empty()) {
    char suffix = static_cast<char>(std::toupper(static_cast<unsigned char>(text.back())));
    if (suffix == 'K') factor = 1024;
    if (suffix == 'M') factor = 1024 * 1024;
    if (suffix == 'G') factor = 1024ull * 1024 * 1024;
    if (factor != 1) text.pop_back();
  }
  return static_cast<std::size_t>(parse_number(flag, text, 1ull << 40) * factor);
}

void parse_listen(settings& s, const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0)
    throw std::invalid_argument("--listen: expected HOST:PORT, got '" + text + "'");
  s.listen_host = text.substr(0, colon);
  if (s.listen_host.size() > 2 && s.listen_host.front() == '[' && s.listen_host.back() == ']')
    s.listen_host = s.listen_host.substr(1, s.listen_host.size() - 2);
  s.listen_port = static_cast<std::uint16_t>(parse_number("--listen", text.substr(colon + 1), 65535));
}

const std::vector<setting_entry>& entries() {
  static const std::vector<setting_entry> table = {
      {{"--listen", "YILIAN_LISTEN", "127.0.0.1:8080", "Address and port of the HTTP server"}, parse_listen},
      {{"--data-dir", "YILIAN_DATA_DIR", "./var", "Data directory (embedded PostgreSQL cluster, exports, dead letters)"},
       [](settings& s, const std::string& v) { s.data_dir = v; }},
      {{"--database-url", "YILIAN_DATABASE_URL", "(none)",
        "PostgreSQL URL of an external server; without it Yilian runs its own PostgreSQL under the data directory"},
       [](settings& s, const std::string& v) { s.database_url = v; }},
      {{"--base-url", "YILIAN_BASE_URL", "(from Host header)", "Public base URL of the FHIR API, used in links and Location"},
       [](settings& s, const std::string& v) {
         s.base_url = v;
         while (!s.base_url.empty() && s.base_url.back() == '/') s.base_url.pop_back();
       }},
      {{"--workers", "YILIAN_WORKERS", "8", "Database worker threads (one PostgreSQL connection each)"},
       [](settings& s, const std::string& v) {
         s.workers = static_cast<unsigned>(parse_number("--workers", v, 1024));
         if (s.workers == 0) throw std::invalid_argument("--workers: must be at least 1");
       }},
      {{"--io-threads", "YILIAN_IO_THREADS", "1", "HTTP I/O threads"},
       [](settings& s, const std::string& v) {
         s.io_threads = static_cast<unsigned>(parse_number("--io-threads", v, 256));
         if (s.io_threads == 0) throw std::invalid_argument("--io-threads: must be at least 1");
       }},
      {{"--body-limit", "YILIAN_BODY_LIMIT", "64M", "Largest accepted request body (K, M, G suffixes); larger gets 413"},
       [](settings& s, const std::string& v) { s.body_limit = parse_size("--body-limit", v); }},
      {{"--max-bundle-entries", "YILIAN_MAX_BUNDLE_ENTRIES", "20000",
        "Most entries a transaction or batch Bundle may have; more gets 413"},
       [](settings& s, const std::string& v) {
         s.max_bundle_entries = static_cast<std::size_t>(parse_number("--max-bundle-entries", v, 10'000'000));
         if (s.max_bundle_entries == 0) throw std::invalid_argument("--max-bundle-entries: must be at least 1");
       }},
      {{"--read-timeout", "YILIAN_READ_TIMEOUT_MS", "30000", "Milliseconds allowed to receive a whole request"},
       [](settings& s, const std::string& v) {
         s.read_timeout = std::chrono::milliseconds(parse_number("--read-timeout", v, 86'400'000));
       }},
      {{"--idle-timeout", "YILIAN_IDLE_TIMEOUT_MS", "60000", "Milliseconds a keep-alive connection may stay idle"},
       [](settings& s, const std::string& v) {
         s.idle_timeout = std::chrono::milliseconds(parse_number("--idle-timeout", v, 86'400'000));
       }},
      {{"--load", "YILIAN_LOAD", "(none)",
        "FHIR JSON/XML file, Bundle or folder to store (PUT by id) before serving; repeatable (env: comma-separated)"},
       [](settings& s, const std::string& v) {
         std::stringstream in(v);
         for (std::string item; std::getline(in, item, ',');)
           if (!item.empty()) s.load.push_back(item);
       }},
      {{"--access-log", "YILIAN_ACCESS_LOG", "on", "One line per request on standard output (on/off)"},
       [](settings& s, const std::string& v) {
         if (v == "on" || v == "true" || v == "1") s.access_log = true;
         else if (v == "off" || v == "false" || v == "0") s.access_log = false;
         else throw std::invalid_argument("--access-log: expected on or off, got '" + v + "'");
       }},
      {{"--export-file-limit", "YILIAN_EXPORT_FILE_LIMIT", "64M",
        "Bulk $export: largest NDJSON file (K, M, G suffixes); a type with more data gets several files"},
       [](settings& s, const std::string& v) {
         s.export_file_limit = parse_size("--export-file-limit", v);
         if (s.export_file_limit == 0) throw std::invalid_argument("--export-file-limit: must be more than 0");
       }},
      {{"--export-expiry", "YILIAN_EXPORT_EXPIRY_S", "3600", "Bulk $export: seconds a finished job and its files are kept"},
       [](settings& s, const std::string& v) {
         s.export_expiry = std::chrono::seconds(parse_number("--export-expiry", v, 365ull * 86'400));
       }},
  };
  return table;
}

}  // namespace

const std::vector<setting_descriptor>& setting_table() {
  static const std::vector<setting_descriptor> table = [] {
    std::vector<setting_descriptor> out;
    for (const auto& e : entries()) out.push_back(e.descriptor);
    return out;
  }();
  return table;
}

settings parse_settings(const std::vector<std::string>& args, bool& help) {
  settings s;
  help = false;
  // Environment first, flags override.
  for (const auto& e : entries())
    if (const char* v = std::getenv(std::string(e.descriptor.env).c_str()); v && *v) e.apply(s, v);
  bool load_from_flags = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") {
      help = true;
      continue;
    }
    std::string flag = arg, val;
    bool has_value = false;
    if (auto eq = arg.find('='); eq != std::string::npos && arg.starts_with("--")) {
      flag = arg.substr(0, eq);
      val = arg.substr(eq + 1);
      has_value = true;
    }
    const setting_entry* found = nullptr;
    for (const auto& e : entries())
      if (e.descriptor.flag == flag) found = &e;
    if (!found) throw std::invalid_argument("unknown option '" + arg + "' (see yilian serve --help)");
    if (!has_value) {
      if (i + 1 >= args.size()) throw std::invalid_argument(flag + ": missing value");
      val = args[++i];
    }
    if (flag == "--load" && !load_from_flags) {
      s.load.clear();  // flags replace the environment's list
      load_from_flags = true;
    }
    found->apply(s, val);
  }
  return s;
}

std::string settings_help() {
  std::ostringstream out;
  out << "Usage: yilian serve [options]\n\nOptions (each also an environment variable):\n";
  for (const auto& d : setting_table()) {
    out << "  " << d.flag;
    for (std::size_t n = d.flag.size(); n < 16; ++n) out << ' ';
    out << d.description << "\n" << std::string(18, ' ') << "env " << d.env << ", default " << d.default_text << "\n";
  }
  return out.str();
}

}  // namespace yilian::gateway
