// FHIRPath system values: exact decimals, partial dates/times with precision, quantities with a
// small UCUM table, and the equality / equivalence / ordering rules of the specification.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>

#include "fhirpath_internal.hpp"

namespace yilian::fhir::fhirpath {

using int128 = decimal::int128;

namespace {

// Checked 128-bit arithmetic: decimals beyond ~38 digits are an evaluation error, never UB.
int128 mul(int128 a, int128 b) {
  int128 r;
  if (__builtin_mul_overflow(a, b, &r)) throw evaluation_error("decimal value out of range");
  return r;
}

int128 add(int128 a, int128 b) {
  int128 r;
  if (__builtin_add_overflow(a, b, &r)) throw evaluation_error("decimal value out of range");
  return r;
}

int128 pow10(int n) {
  int128 r = 1;
  for (int i = 0; i < n; ++i) r = mul(r, 10);
  return r;
}

// Aligns two decimals to the same scale.
void align(decimal& a, decimal& b) {
  if (a.scale < b.scale) {
    a.mantissa = mul(a.mantissa, pow10(b.scale - a.scale));
    a.scale = b.scale;
  } else if (b.scale < a.scale) {
    b.mantissa = mul(b.mantissa, pow10(a.scale - b.scale));
    b.scale = a.scale;
  }
}

// Divides rounding half away from zero.
int128 div_round(int128 num, int128 den) {
  bool neg = (num < 0) != (den < 0);
  int128 n = num < 0 ? -num : num;
  int128 d = den < 0 ? -den : den;
  int128 q = n / d;
  if ((n % d) * 2 >= d) ++q;
  return neg ? -q : q;
}

}  // namespace

std::optional<decimal> decimal::parse(std::string_view text) {
  std::size_t i = 0;
  bool neg = false;
  if (i < text.size() && (text[i] == '-' || text[i] == '+')) neg = text[i++] == '-';
  decimal d;
  bool any = false;
  int digits = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
    d.mantissa = d.mantissa * 10 + (text[i++] - '0');
    any = true;
    if (d.mantissa != 0 && ++digits > 36) return std::nullopt;
  }
  if (!any) return std::nullopt;
  if (i < text.size() && text[i] == '.') {
    ++i;
    bool frac = false;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
      d.mantissa = d.mantissa * 10 + (text[i++] - '0');
      ++d.scale;
      frac = true;
      if (++digits > 36) return std::nullopt;
    }
    if (!frac) return std::nullopt;
  }
  if (i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
    ++i;
    bool eneg = false;
    if (i < text.size() && (text[i] == '-' || text[i] == '+')) eneg = text[i++] == '-';
    int e = 0;
    bool edig = false;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])) && e < 100) {
      e = e * 10 + (text[i++] - '0');
      edig = true;
    }
    if (!edig) return std::nullopt;
    if (eneg) {
      if (d.scale + e > 38) return std::nullopt;
      d.scale += e;
    } else if (e <= d.scale) {
      d.scale -= e;
    } else {
      try {
        d.mantissa = mul(d.mantissa, pow10(e - d.scale));
      } catch (const evaluation_error&) {
        return std::nullopt;
      }
      d.scale = 0;
    }
  }
  if (i != text.size()) return std::nullopt;
  if (neg) d.mantissa = -d.mantissa;
  return d;
}

decimal decimal::from_double(long double v, int scale) {
  decimal d;
  d.scale = scale;
  d.mantissa = static_cast<int128>(std::llround(v * std::pow(10.0L, scale)));
  if (std::fabs(v) > 9e9L) {  // keep large magnitudes representable
    d.scale = 0;
    d.mantissa = static_cast<int128>(std::llround(v));
  }
  return d;
}

long double decimal::to_double() const {
  return static_cast<long double>(mantissa) / std::pow(10.0L, scale);
}

std::string decimal::to_string() const {
  // Digits are produced backwards into a fixed buffer (no insertions: GCC 12 warns falsely on them).
  char buf[96];
  char* end = buf + sizeof buf;
  char* p = end;
  int128 m = mantissa < 0 ? -mantissa : mantissa;
  int produced = 0;
  do {
    if (produced == scale && scale > 0) *--p = '.';
    *--p = static_cast<char>('0' + static_cast<int>(m % 10));
    m /= 10;
    ++produced;
  } while ((m > 0 || produced <= scale) && p > buf + 2);
  if (mantissa < 0) *--p = '-';
  return std::string(p, static_cast<std::size_t>(end - p));
}

int compare(const decimal& a, const decimal& b) {
  decimal x = a, y = b;
  align(x, y);
  return x.mantissa < y.mantissa ? -1 : x.mantissa > y.mantissa ? 1 : 0;
}

decimal decimal::rounded(int to_scale) const {
  if (to_scale >= scale) {
    decimal d = *this;
    d.mantissa = mul(d.mantissa, pow10(to_scale - scale));
    d.scale = to_scale;
    return d;
  }
  decimal d;
  d.scale = to_scale;
  d.mantissa = div_round(mantissa, pow10(scale - to_scale));
  return d;
}

item item::make_boolean(bool b) {
  item it;
  it.kind = item_kind::boolean;
  it.boolean_value = b;
  return it;
}
item item::make_string(std::string s) {
  item it;
  it.kind = item_kind::string;
  it.string_value = std::move(s);
  return it;
}
item item::make_integer(std::int64_t i) {
  item it;
  it.kind = item_kind::integer;
  it.integer_value = i;
  return it;
}
item item::make_decimal(decimal d) {
  item it;
  it.kind = item_kind::decimal;
  it.decimal_value = d;
  return it;
}
item item::make_quantity(decimal d, std::string unit) {
  item it;
  it.kind = item_kind::quantity;
  it.decimal_value = d;
  it.string_value = std::move(unit);
  return it;
}

std::string item::type_name() const {
  switch (kind) {
    case item_kind::node: return std::string(fhir_type);
    case item_kind::boolean: return "Boolean";
    case item_kind::string: return "String";
    case item_kind::integer: return "Integer";
    case item_kind::decimal: return "Decimal";
    case item_kind::date: return "Date";
    case item_kind::datetime: return "DateTime";
    case item_kind::time: return "Time";
    case item_kind::quantity: return "Quantity";
    case item_kind::type_info: return "TypeInfo";
  }
  return {};
}

std::optional<std::string> item::to_string() const {
  switch (kind) {
    case item_kind::node:
      if (node && (node->is_string() || node->is_number() || node->is_boolean())) return node->text();
      return std::nullopt;
    case item_kind::boolean: return boolean_value ? "true" : "false";
    case item_kind::string: return string_value;
    case item_kind::integer: return std::to_string(integer_value);
    case item_kind::decimal: return decimal_value.to_string();
    case item_kind::date:
    case item_kind::datetime:
    case item_kind::time: return fhirpath::to_string(temporal_value, kind);
    case item_kind::quantity: return detail::format_quantity(*this);
    case item_kind::type_info: return std::nullopt;
  }
  return std::nullopt;
}

// ---- Date / time -------------------------------------------------------------------------------

namespace {

bool read_int(std::string_view s, std::size_t& i, int n, int& out) {
  if (i + static_cast<std::size_t>(n) > s.size()) return false;
  int v = 0;
  for (int k = 0; k < n; ++k) {
    char c = s[i + static_cast<std::size_t>(k)];
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  i += static_cast<std::size_t>(n);
  out = v;
  return true;
}

bool leap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }
int days_in_month(int y, int m) {
  static const int d[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && leap(y) ? 29 : d[m - 1];
}

// Days since 1970-01-01 (proleptic Gregorian).
std::int64_t days_from_civil(int y, int m, int d) {
  y -= m <= 2;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = static_cast<unsigned>((153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1);
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

void civil_from_days(std::int64_t z, int& y, int& m, int& d) {
  z += 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const std::int64_t yy = static_cast<std::int64_t>(yoe) + era * 400;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  d = static_cast<int>(doy - (153 * mp + 2) / 5 + 1);
  m = static_cast<int>(mp < 10 ? mp + 3 : mp - 9);
  y = static_cast<int>(yy + (m <= 2));
}

bool parse_time_fields(std::string_view s, std::size_t& i, temporal& t) {
  if (!read_int(s, i, 2, t.hour) || t.hour > 23) return false;
  t.prec = precision::hour;
  if (i < s.size() && s[i] == ':') {
    ++i;
    if (!read_int(s, i, 2, t.minute) || t.minute > 59) return false;
    t.prec = precision::minute;
    if (i < s.size() && s[i] == ':') {
      ++i;
      if (!read_int(s, i, 2, t.second) || t.second > 59) return false;
      t.prec = precision::second;
      if (i < s.size() && s[i] == '.') {
        ++i;
        std::size_t b = i;
        int ms = 0, n = 0;
        while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
          if (n < 3) ms = ms * 10 + (s[i] - '0');
          ++n;
          ++i;
        }
        if (i == b) return false;
        while (n < 3) {
          ms *= 10;
          ++n;
        }
        t.millisecond = ms;
        t.prec = precision::millisecond;
      }
    }
  }
  return true;
}

}  // namespace

std::optional<temporal> parse_temporal(std::string_view s, item_kind kind) {
  temporal t;
  std::size_t i = 0;
  if (kind == item_kind::time) {
    if (!parse_time_fields(s, i, t) || i != s.size()) return std::nullopt;
    return t;
  }
  if (!read_int(s, i, 4, t.year)) return std::nullopt;
  t.prec = precision::year;
  if (i < s.size() && s[i] == '-') {
    ++i;
    if (!read_int(s, i, 2, t.month) || t.month < 1 || t.month > 12) return std::nullopt;
    t.prec = precision::month;
    if (i < s.size() && s[i] == '-') {
      ++i;
      if (!read_int(s, i, 2, t.day) || t.day < 1 || t.day > days_in_month(t.year, t.month)) return std::nullopt;
      t.prec = precision::day;
    }
  }
  if (kind == item_kind::date) {
    if (i != s.size()) return std::nullopt;
    return t;
  }
  if (i < s.size() && s[i] == 'T') {
    ++i;
    if (t.prec != precision::day && i < s.size()) return std::nullopt;
    if (i < s.size()) {
      if (!parse_time_fields(s, i, t)) return std::nullopt;
      if (i < s.size() && s[i] == 'Z') {
        ++i;
        t.has_tz = true;
      } else if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
        int sign = s[i] == '-' ? -1 : 1;
        ++i;
        int h = 0, m = 0;
        if (!read_int(s, i, 2, h) || i >= s.size() || s[i] != ':') return std::nullopt;
        ++i;
        if (!read_int(s, i, 2, m)) return std::nullopt;
        t.has_tz = true;
        t.tz_minutes = sign * (h * 60 + m);
      }
    }
  }
  if (i != s.size()) return std::nullopt;
  return t;
}

std::string to_string(const temporal& t, item_kind kind) {
  char buf[64];
  std::string out;
  if (kind != item_kind::time) {
    std::snprintf(buf, sizeof buf, "%04d", t.year);
    out += buf;
    if (t.prec >= precision::month) {
      std::snprintf(buf, sizeof buf, "-%02d", t.month);
      out += buf;
    }
    if (t.prec >= precision::day) {
      std::snprintf(buf, sizeof buf, "-%02d", t.day);
      out += buf;
    }
    if (kind == item_kind::date || t.prec <= precision::day) return out;  // toString() of a DateTime has no bare 'T'
    out += "T";
  }
  std::snprintf(buf, sizeof buf, "%02d", t.hour);
  out += buf;
  if (t.prec >= precision::minute) {
    std::snprintf(buf, sizeof buf, ":%02d", t.minute);
    out += buf;
  }
  if (t.prec >= precision::second) {
    std::snprintf(buf, sizeof buf, ":%02d", t.second);
    out += buf;
  }
  if (t.prec >= precision::millisecond) {
    std::snprintf(buf, sizeof buf, ".%03d", t.millisecond);
    out += buf;
  }
  if (kind == item_kind::datetime && t.has_tz) {
    if (t.tz_minutes == 0) {
      out += "Z";
    } else {
      int m = t.tz_minutes < 0 ? -t.tz_minutes : t.tz_minutes;
      std::snprintf(buf, sizeof buf, "%c%02d:%02d", t.tz_minutes < 0 ? '-' : '+', m / 60, m % 60);
      out += buf;
    }
  }
  return out;
}

namespace detail {

namespace {

// Precision level used for comparison: seconds and milliseconds are one level.
int level(precision p) { return p == precision::millisecond ? 5 : static_cast<int>(p); }

// Shift a datetime to UTC (precision >= hour, has_tz).
temporal to_utc(const temporal& t) {
  temporal r = t;
  std::int64_t days = days_from_civil(t.year, t.month ? t.month : 1, t.day ? t.day : 1);
  std::int64_t minutes = days * 1440 + t.hour * 60 + t.minute - t.tz_minutes;
  std::int64_t d = minutes >= 0 ? minutes / 1440 : (minutes - 1439) / 1440;
  std::int64_t rem = minutes - d * 1440;
  civil_from_days(d, r.year, r.month, r.day);
  r.hour = static_cast<int>(rem / 60);
  r.minute = static_cast<int>(rem % 60);
  r.tz_minutes = 0;
  return r;
}

// Compares two temporals of compatible kinds; nullopt when precision makes it uncertain.
std::optional<int> compare_temporal(temporal a, temporal b, bool time_only) {
  if (!time_only && a.prec >= precision::hour && b.prec >= precision::hour) {
    if (a.has_tz != b.has_tz) {
      // One side has a zone: compare as local, but only when they differ by more than a day.
    } else if (a.has_tz) {
      a = to_utc(a);
      b = to_utc(b);
    }
  }
  int fa[7] = {a.year, a.month, a.day, a.hour, a.minute, a.second * 1000 + a.millisecond, 0};
  int fb[7] = {b.year, b.month, b.day, b.hour, b.minute, b.second * 1000 + b.millisecond, 0};
  int start = time_only ? 3 : 0;
  int la = level(a.prec), lb = level(b.prec);
  int common = std::min(la, lb);
  for (int k = start; k <= common; ++k) {
    if (fa[k] != fb[k]) {
      if (!time_only && a.has_tz != b.has_tz && a.prec >= precision::hour && b.prec >= precision::hour && k >= 2) {
        // Within a day of each other and the zones are unknown: uncertain.
        std::int64_t da = days_from_civil(a.year, a.month, a.day), db = days_from_civil(b.year, b.month, b.day);
        if (da - db <= 1 && db - da <= 1) return std::nullopt;
      }
      return fa[k] < fb[k] ? -1 : 1;
    }
  }
  if (la != lb) return std::nullopt;
  if (!time_only && a.has_tz != b.has_tz && a.prec >= precision::hour) return std::nullopt;
  return 0;
}

// ---- UCUM (small table) ----

struct dims {
  int d[6] = {0, 0, 0, 0, 0, 0};  // m, g, s, mol, K, other
  bool operator==(const dims& o) const { return std::equal(d, d + 6, o.d); }
};

struct unit_value {
  decimal factor{1, 0};
  dims dim;
};

struct atom {
  const char* code;
  decimal factor;
  int dim_index;  // -1 dimensionless
  int power;
  bool prefixable;
};

const atom atoms[] = {
    {"m", {1, 0}, 0, 1, true},           {"g", {1, 0}, 1, 1, true},          {"s", {1, 0}, 2, 1, true},
    {"mol", {1, 0}, 3, 1, true},         {"K", {1, 0}, 4, 1, false},         {"L", {1, 3}, 0, 3, true},
    {"l", {1, 3}, 0, 3, true},           {"min", {60, 0}, 2, 1, false},      {"h", {3600, 0}, 2, 1, false},
    {"d", {86400, 0}, 2, 1, false},      {"wk", {604800, 0}, 2, 1, false},   {"mo", {2629800, 0}, 2, 1, false},
    {"a", {31557600, 0}, 2, 1, false},   {"[in_i]", {254, 4}, 0, 1, false},  {"[ft_i]", {3048, 4}, 0, 1, false},
    {"[lb_av]", {45359237, 5}, 1, 1, false}, {"[oz_av]", {28349523125, 9}, 1, 1, false},
    {"%", {1, 2}, -1, 0, false},         {"1", {1, 0}, -1, 0, false},        {"U", {1, 0}, 5, 1, true},
    {"[iU]", {1, 0}, 5, 1, true},        {"eq", {1, 0}, 3, 1, true},         {"cal", {4184, 0}, 5, 1, true},
};

struct prefix {
  char code;
  int exp;
};
const prefix prefixes[] = {{'k', 3}, {'h', 2}, {'d', -1}, {'c', -2}, {'m', -3}, {'u', -6}, {'n', -9}, {'p', -12}, {'M', 6}, {'G', 9}};

decimal pow10_decimal(int e) {
  if (e >= 0) return decimal{pow10(e), 0};
  return decimal{1, -e};
}

std::optional<unit_value> parse_unit_term(std::string_view t) {
  // Exponent suffix: digits at the end (not for bracketed atoms ending in ']').
  int exp = 1;
  std::size_t end = t.size();
  while (end > 0 && std::isdigit(static_cast<unsigned char>(t[end - 1]))) --end;
  if (end < t.size() && end > 0 && t[end - 1] != ']' && !(end == 0)) {
    std::size_t sign_pos = end;
    if (end > 1 && t[end - 1] == '-') sign_pos = end - 1;
    if (t.size() - end > 2) return std::nullopt;  // exponents beyond 99 are not units
    exp = 0;
    for (char c : t.substr(end)) exp = exp * 10 + (c - '0');
    if (sign_pos != end) exp = -exp;
    t = t.substr(0, sign_pos);
  }
  auto build = [&](const atom& a, int pexp) -> unit_value {
    unit_value u;
    decimal f = decimal_mul(a.factor, pow10_decimal(pexp * (a.power ? a.power : 1) + (a.power == 3 ? 0 : 0)));
    if (a.power == 3 && pexp != 0) f = decimal_mul(a.factor, pow10_decimal(pexp));
    decimal total{1, 0};
    for (int k = 0; k < (exp < 0 ? -exp : exp); ++k) total = decimal_mul(total, f);
    if (exp < 0) total = *decimal_div(decimal{1, 0}, total);
    u.factor = total;
    if (a.dim_index >= 0) u.dim.d[a.dim_index] = a.power * exp;
    return u;
  };
  for (const atom& a : atoms) {
    if (t == a.code) return build(a, 0);
  }
  for (const prefix& p : prefixes) {
    if (t.size() < 2 || t[0] != p.code) continue;
    for (const atom& a : atoms) {
      if (a.prefixable && t.substr(1) == a.code) return build(a, p.exp);
    }
  }
  return std::nullopt;
}

std::optional<unit_value> parse_unit(std::string_view unit) {
  unit_value total;
  if (unit.empty() || unit == "1") return total;
  std::size_t i = 0;
  bool divide = false;
  while (i <= unit.size()) {
    std::size_t j = i;
    int depth = 0;
    while (j < unit.size() && (depth > 0 || (unit[j] != '.' && unit[j] != '/'))) {
      if (unit[j] == '[') ++depth;
      if (unit[j] == ']') --depth;
      ++j;
    }
    auto term = parse_unit_term(unit.substr(i, j - i));
    if (!term) return std::nullopt;
    if (divide) {
      total.factor = *decimal_div(total.factor, term->factor);
      for (int k = 0; k < 6; ++k) total.dim.d[k] -= term->dim.d[k];
    } else {
      total.factor = decimal_mul(total.factor, term->factor);
      for (int k = 0; k < 6; ++k) total.dim.d[k] += term->dim.d[k];
    }
    if (j >= unit.size()) break;
    divide = unit[j] == '/';
    i = j + 1;
  }
  return total;
}

// Calendar duration word -> UCUM code for week and shorter; "year"/"month" stay calendar units.
std::string normalize_unit(std::string_view u) {
  std::string s(u);
  if (s.size() > 1 && s.back() == 's' && s != "ms" && s != "s" && is_calendar_unit(s)) s.pop_back();
  if (s == "week") return "wk";
  if (s == "day") return "d";
  if (s == "hour") return "h";
  if (s == "minute") return "min";
  if (s == "second") return "s";
  if (s == "millisecond") return "ms";
  return s;
}

// Quantity in base units (for comparison).
std::optional<std::pair<decimal, dims>> canonical(const item& q) {
  std::string u = normalize_unit(q.string_value);
  if (u == "year" || u == "month") return std::nullopt;
  auto uv = parse_unit(u);
  if (!uv) return std::nullopt;
  return std::make_pair(decimal_mul(q.decimal_value, uv->factor), uv->dim);
}

// nullopt: not comparable (different dimensions, unknown units, calendar year/month vs UCUM).
std::optional<int> compare_quantity(const item& a, const item& b, int* min_scale) {
  std::string ua = normalize_unit(a.string_value), ub = normalize_unit(b.string_value);
  if (ua == ub) {
    if (min_scale) *min_scale = std::min(a.decimal_value.scale, b.decimal_value.scale);
    return compare(a.decimal_value, b.decimal_value);
  }
  auto ca = canonical(a), cb = canonical(b);
  if (!ca || !cb || !(ca->second == cb->second)) return std::nullopt;
  if (min_scale) {
    // Precision of the least precise operand, expressed at the canonical scale.
    *min_scale = std::min(ca->first.scale - (a.decimal_value.scale - std::min(a.decimal_value.scale, b.decimal_value.scale)),
                          cb->first.scale - (b.decimal_value.scale - std::min(a.decimal_value.scale, b.decimal_value.scale)));
    *min_scale = std::min(a.decimal_value.scale, b.decimal_value.scale);
    decimal x = ca->first.rounded(*min_scale), y = cb->first.rounded(*min_scale);
    return compare(x, y);
  }
  return compare(ca->first, cb->first);
}

std::string normalize_space_lower(std::string_view s) {
  std::string out;
  bool space = false;
  for (char c : s) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

bool is_temporal(item_kind k) { return k == item_kind::date || k == item_kind::datetime || k == item_kind::time; }

}  // namespace

bool is_calendar_unit(std::string_view w) {
  static const char* const words[] = {"year",  "years",  "month",  "months",  "week",   "weeks",   "day",         "days",
                                      "hour",  "hours",  "minute", "minutes", "second", "seconds", "millisecond", "milliseconds"};
  for (const char* x : words)
    if (w == x) return true;
  return false;
}

decimal decimal_add(const decimal& a, const decimal& b, bool subtract) {
  decimal x = a, y = b;
  align(x, y);
  x.mantissa = add(x.mantissa, subtract ? -y.mantissa : y.mantissa);
  return x;
}

decimal decimal_mul(const decimal& a, const decimal& b) {
  decimal r{mul(a.mantissa, b.mantissa), a.scale + b.scale};
  if (r.scale > 16) r = r.rounded(16);
  return r;
}

std::optional<decimal> decimal_div(const decimal& a, const decimal& b) {
  if (b.mantissa == 0) return std::nullopt;
  const int target = 8;
  // a/b = (ma / mb) * 10^(sb - sa); result mantissa at scale `target`.
  int shift = target + b.scale - a.scale;
  int128 num = a.mantissa, den = b.mantissa;
  if (shift >= 0) num = mul(num, pow10(shift));
  else den = mul(den, pow10(-shift));
  return decimal{div_round(num, den), target};
}

std::string format_quantity(const item& q) {
  std::string out = q.decimal_value.to_string();
  out += ' ';
  if (is_calendar_unit(q.string_value)) out += q.string_value;
  else out += "'" + q.string_value + "'";
  return out;
}

std::optional<item> parse_quantity_text(std::string_view text) {
  std::size_t sp = text.find(' ');
  std::string_view num = text.substr(0, sp);
  auto d = decimal::parse(num);
  if (!d) return std::nullopt;
  if (sp == std::string_view::npos) return item::make_quantity(*d, "1");
  std::string_view unit = text.substr(sp + 1);
  while (!unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
  if (unit.size() >= 2 && unit.front() == '\'' && unit.back() == '\'')
    return item::make_quantity(*d, std::string(unit.substr(1, unit.size() - 2)));
  if (is_calendar_unit(unit)) return item::make_quantity(*d, std::string(unit));
  return std::nullopt;
}

bool units_comparable(std::string_view a, std::string_view b) {
  std::string ua = normalize_unit(a), ub = normalize_unit(b);
  if (ua == ub) return true;
  auto pa = parse_unit(ua), pb = parse_unit(ub);
  return pa && pb && pa->dim == pb->dim;
}

std::optional<item> quantity_multiply(const item& a, const item& b, bool divide) {
  auto pa = parse_unit(normalize_unit(a.string_value)), pb = parse_unit(normalize_unit(b.string_value));
  if (!pa || !pb) return std::nullopt;
  decimal va = decimal_mul(a.decimal_value, pa->factor), vb = decimal_mul(b.decimal_value, pb->factor);
  dims d;
  for (int k = 0; k < 6; ++k) d.d[k] = pa->dim.d[k] + (divide ? -pb->dim.d[k] : pb->dim.d[k]);
  decimal v;
  if (divide) {
    auto q = decimal_div(va, vb);
    if (!q) return std::nullopt;
    v = *q;
  } else {
    v = decimal_mul(va, vb);
  }
  static const char* const base[] = {"m", "g", "s", "mol", "K", "U"};
  std::string num, den;
  for (int k = 0; k < 6; ++k) {
    int e = d.d[k];
    if (e == 0) continue;
    std::string& s = e > 0 ? num : den;
    if (!s.empty()) s += '.';
    s += base[k];
    int ae = e < 0 ? -e : e;
    if (ae != 1) s += std::to_string(ae);
  }
  std::string unit = num.empty() ? (den.empty() ? "1" : "1") : num;
  if (!den.empty()) unit += "/" + den;
  return item::make_quantity(v, unit);
}

std::optional<temporal> add_duration(const temporal& in, item_kind kind, const decimal& amount, std::string_view unit_text,
                                     bool subtract) {
  std::string unit = normalize_unit(unit_text);
  if (unit == "a" || unit == "mo") return std::nullopt;  // UCUM years/months are not calendar durations
  // Whole units only (fractions are truncated), except milliseconds.
  std::int64_t n = static_cast<std::int64_t>(amount.to_double());
  if (subtract) n = -n;
  temporal t = in;
  auto add_days = [&](std::int64_t days) {
    std::int64_t z = days_from_civil(t.year, t.month ? t.month : 1, t.day ? t.day : 1) + days;
    int y, m, d;
    civil_from_days(z, y, m, d);
    t.year = y;
    if (t.prec >= precision::month) t.month = m;
    if (t.prec >= precision::day) t.day = d;
  };
  if (unit == "year") {
    t.year += static_cast<int>(n);
    if (t.prec >= precision::day) t.day = std::min(t.day, days_in_month(t.year, t.month));
    return t;
  }
  if (unit == "month") {
    if (t.prec < precision::month) {
      t.year += static_cast<int>(n / 12);
      return t;
    }
    std::int64_t total = static_cast<std::int64_t>(t.year) * 12 + (t.month - 1) + n;
    t.year = static_cast<int>(total / 12);
    t.month = static_cast<int>(total % 12) + 1;
    if (t.prec >= precision::day) t.day = std::min(t.day, days_in_month(t.year, t.month));
    return t;
  }
  std::int64_t ms = 0;
  if (unit == "wk") ms = n * 7 * 86400000LL;
  else if (unit == "d") ms = n * 86400000LL;
  else if (unit == "h") ms = n * 3600000LL;
  else if (unit == "min") ms = n * 60000LL;
  else if (unit == "s") ms = n * 1000LL;
  else if (unit == "ms") ms = static_cast<std::int64_t>(amount.to_double()) * (subtract ? -1 : 1);
  else return std::nullopt;
  if (kind == item_kind::date) {
    if (ms % 86400000LL != 0 && (unit == "h" || unit == "min" || unit == "s" || unit == "ms")) {
      ms = (ms / 86400000LL) * 86400000LL;
    }
    if (t.prec >= precision::day) add_days(ms / 86400000LL);
    else if (t.prec == precision::month) {
      // Month precision: whole months of days are ignored per spec; keep value.
    }
    return t;
  }
  if (kind == item_kind::time) {
    std::int64_t cur = ((t.hour * 60LL + t.minute) * 60 + t.second) * 1000 + t.millisecond;
    cur = ((cur + ms) % 86400000LL + 86400000LL) % 86400000LL;
    t.millisecond = static_cast<int>(cur % 1000);
    cur /= 1000;
    t.second = static_cast<int>(cur % 60);
    cur /= 60;
    t.minute = static_cast<int>(cur % 60);
    t.hour = static_cast<int>(cur / 60);
    return t;
  }
  // DateTime
  std::int64_t days = days_from_civil(t.year, t.month ? t.month : 1, t.day ? t.day : 1);
  std::int64_t cur = days * 86400000LL + ((t.hour * 60LL + t.minute) * 60 + t.second) * 1000 + t.millisecond + ms;
  std::int64_t d = cur >= 0 ? cur / 86400000LL : (cur - 86399999LL) / 86400000LL;
  std::int64_t rem = cur - d * 86400000LL;
  int y, m, dd;
  civil_from_days(d, y, m, dd);
  t.year = y;
  if (t.prec >= precision::month) t.month = m;
  if (t.prec >= precision::day) t.day = dd;
  if (t.prec >= precision::hour) t.hour = static_cast<int>(rem / 3600000LL);
  if (t.prec >= precision::minute) t.minute = static_cast<int>(rem / 60000LL % 60);
  if (t.prec >= precision::second) t.second = static_cast<int>(rem / 1000 % 60);
  if (t.prec >= precision::millisecond) t.millisecond = static_cast<int>(rem % 1000);
  return t;
}

// ---- Conversion of nodes to system values ----

const item& to_system(const item& it, const definitions& defs, item& storage) {
  if (it.kind != item_kind::node || !it.node) return it;
  const value& v = *it.node;
  if (v.is_object() || v.is_array() || v.is_null()) {
    if (!v.is_object()) return it;
    // Only Quantity-like objects convert; avoid the copy for everything else.
    if (!v.find("value")) return it;
  }
  storage = to_system(it, defs);
  return storage;
}

item to_system(const item& it, const definitions& defs) {
  if (it.kind != item_kind::node || !it.node) return it;
  const value& v = *it.node;
  std::string_view t = it.fhir_type;
  if (v.is_boolean()) return item::make_boolean(v.as_bool());
  if (v.is_number()) {
    if (t == "integer" || t == "positiveInt" || t == "unsignedInt" || t == "integer64") {
      try {
        return item::make_integer(std::stoll(v.text()));
      } catch (...) {
      }
    }
    if (auto d = decimal::parse(v.text())) return item::make_decimal(*d);
    return it;
  }
  if (v.is_string()) {
    item out;
    if (t == "date" || t == "dateTime" || t == "instant" || t == "time") {
      item_kind k = t == "date" ? item_kind::date : t == "time" ? item_kind::time : item_kind::datetime;
      if (auto p = parse_temporal(v.text(), k)) {
        out.kind = k;
        out.temporal_value = *p;
        return out;
      }
      if (k == item_kind::datetime) {
        if (auto p = parse_temporal(v.text(), item_kind::date)) {
          out.kind = item_kind::datetime;
          out.temporal_value = *p;
          return out;
        }
      }
    }
    return item::make_string(v.text());
  }
  if (v.is_object()) {
    const type_def* td = t.empty() ? nullptr : defs.find_type(t);
    bool quantity = false;
    for (int depth = 0; td && depth < 6; ++depth) {
      if (td->name == "Quantity") {
        quantity = true;
        break;
      }
      td = td->base.empty() ? nullptr : defs.find_type(td->base);
    }
    if (quantity) {
      const value* val = v.find("value");
      if (!val || !val->is_number()) return it;
      auto d = decimal::parse(val->text());
      if (!d) return it;
      const value* code = v.find("code");
      const value* system = v.find("system");
      const value* unit = v.find("unit");
      std::string u;
      if (code && system && system->text() == "http://unitsofmeasure.org") u = code->text();
      else if (code && !system) u = code->text();
      else if (unit) u = unit->text();
      else u = "1";
      return item::make_quantity(*d, u);
    }
  }
  return it;
}

std::optional<bool> items_equal(const item& a0, const item& b0, const definitions& defs) {
  if (a0.kind == item_kind::node && b0.kind == item_kind::node) {
    if (!a0.node && !a0.companion && !b0.node && !b0.companion)  // resolve() stubs
      return a0.fhir_type == b0.fhir_type && a0.string_value == b0.string_value;
    if (a0.node == b0.node && a0.companion == b0.companion) return true;
    if (!a0.node || !b0.node) return false;
    if (a0.node->is_object() && b0.node->is_object()) return *a0.node == *b0.node;
    if (a0.node->is_object() != b0.node->is_object()) return false;
    // Two string primitives of string-like types: text equality (dates/times go the long way).
    if (a0.node->is_string() && b0.node->is_string()) {
      auto plain = [](std::string_view t) {
        return t != "date" && t != "dateTime" && t != "instant" && t != "time";
      };
      if (plain(a0.fhir_type) && plain(b0.fhir_type)) return a0.node->text() == b0.node->text();
    }
  }
  item sa, sb;
  const item& a = to_system(a0, defs, sa);
  const item& b = to_system(b0, defs, sb);
  if (a.kind == item_kind::node || b.kind == item_kind::node) {
    if (a.kind == item_kind::node && b.kind == item_kind::node && a.node && b.node) return *a.node == *b.node;
    return false;
  }
  if ((a.kind == item_kind::integer || a.kind == item_kind::decimal) &&
      (b.kind == item_kind::integer || b.kind == item_kind::decimal)) {
    decimal x = a.kind == item_kind::integer ? decimal::from_integer(a.integer_value) : a.decimal_value;
    decimal y = b.kind == item_kind::integer ? decimal::from_integer(b.integer_value) : b.decimal_value;
    return compare(x, y) == 0;
  }
  if (is_temporal(a.kind) && is_temporal(b.kind)) {
    if ((a.kind == item_kind::time) != (b.kind == item_kind::time)) return false;
    auto c = compare_temporal(a.temporal_value, b.temporal_value, a.kind == item_kind::time);
    if (!c) return std::nullopt;
    return *c == 0;
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case item_kind::boolean: return a.boolean_value == b.boolean_value;
    case item_kind::string: return a.string_value == b.string_value;
    case item_kind::quantity: {
      auto c = compare_quantity(a, b, nullptr);
      if (!c) {
        std::string ua = normalize_unit(a.string_value), ub = normalize_unit(b.string_value);
        if ((ua == "year" && ub == "a") || (ua == "a" && ub == "year") || (ua == "month" && ub == "mo") ||
            (ua == "mo" && ub == "month"))
          return std::nullopt;
        return std::nullopt;
      }
      return *c == 0;
    }
    case item_kind::type_info: return a.fhir_type == b.fhir_type && a.string_value == b.string_value;
    default: return false;
  }
}

bool items_equivalent(const item& a0, const item& b0, const definitions& defs) {
  item sa, sb;
  const item& a = to_system(a0, defs, sa);
  const item& b = to_system(b0, defs, sb);
  if (a.kind == item_kind::node || b.kind == item_kind::node) {
    auto e = items_equal(a0, b0, defs);
    return e && *e;
  }
  if ((a.kind == item_kind::integer || a.kind == item_kind::decimal) &&
      (b.kind == item_kind::integer || b.kind == item_kind::decimal)) {
    decimal x = a.kind == item_kind::integer ? decimal::from_integer(a.integer_value) : a.decimal_value;
    decimal y = b.kind == item_kind::integer ? decimal::from_integer(b.integer_value) : b.decimal_value;
    int s = std::min(x.scale, y.scale);
    return compare(x.rounded(s), y.rounded(s)) == 0;
  }
  if (a.kind == item_kind::string && b.kind == item_kind::string)
    return normalize_space_lower(a.string_value) == normalize_space_lower(b.string_value);
  if (a.kind == item_kind::quantity && b.kind == item_kind::quantity) {
    int s = 0;
    auto c = compare_quantity(a, b, &s);
    return c && *c == 0;
  }
  auto e = items_equal(a, b, defs);
  return e && *e;
}

std::optional<int> items_compare(const item& a0, const item& b0, const definitions& defs) {
  item sa, sb;
  const item& a = to_system(a0, defs, sa);
  const item& b = to_system(b0, defs, sb);
  if ((a.kind == item_kind::integer || a.kind == item_kind::decimal) &&
      (b.kind == item_kind::integer || b.kind == item_kind::decimal)) {
    if (a.kind == item_kind::integer && b.kind == item_kind::integer)
      return a.integer_value < b.integer_value ? -1 : a.integer_value > b.integer_value ? 1 : 0;
    decimal x = a.kind == item_kind::integer ? decimal::from_integer(a.integer_value) : a.decimal_value;
    decimal y = b.kind == item_kind::integer ? decimal::from_integer(b.integer_value) : b.decimal_value;
    return compare(x, y);
  }
  if (a.kind == item_kind::string && b.kind == item_kind::string)
    return a.string_value < b.string_value ? -1 : a.string_value > b.string_value ? 1 : 0;
  if (is_temporal(a.kind) && is_temporal(b.kind) && (a.kind == item_kind::time) == (b.kind == item_kind::time))
    return compare_temporal(a.temporal_value, b.temporal_value, a.kind == item_kind::time);
  if (a.kind == item_kind::quantity && b.kind == item_kind::quantity) {
    auto c = compare_quantity(a, b, nullptr);
    if (!c) return std::nullopt;
    return c;
  }
  throw evaluation_error("cannot compare " + a.type_name() + " with " + b.type_name());
}

}  // namespace detail

std::optional<std::pair<decimal, std::string>> ucum_canonical(const decimal& value, std::string_view unit) {
  item q = item::make_quantity(value, std::string(unit));
  auto c = detail::canonical(q);
  if (!c) return std::nullopt;
  static const char* const base[6] = {"m", "g", "s", "mol", "K", "U"};
  std::string code;
  for (int k = 0; k < 6; ++k) {
    int power = c->second.d[k];
    if (power == 0) continue;
    if (!code.empty()) code += '.';
    code += base[k];
    if (power != 1) code += std::to_string(power);
  }
  if (code.empty()) code = "1";
  return std::make_pair(c->first, code);
}

}  // namespace yilian::fhir::fhirpath
