"""The one written-down set of names used across the package.

Dimensions, variable names and the paper's column names (the defaults of the study config).
Cities are keyed by 6-digit adcode strings, never by pinyin (福州/抚州 both read "Fuzhou").
"""

from __future__ import annotations

# Dimensions of every panel and every InferenceData (the whole vocabulary is DIMS, at the end).
CITY = "city"
YEAR = "year"
COEF = "coef"
MECHANISM = "mechanism"
INDICATOR = "indicator"
# Further dimensions of the Bayesian models.
OBS = "obs"  # one row of the (city, year) panel, in panel order (panel and IV models)
EQUATION = "equation"  # IV: first and second stage
EQUATION_BIS = "equation_bis"  # IV: the second axis of the stages' 2 x 2 error correlation
FIRST_COEF = "first_coef"  # IV: first-stage coefficients (instrument, controls)
CONTROL = "control"  # IV: the controls' columns of the design
MUNDLAK = "mundlak"  # panel: the Mundlak city means of the regressors
GROUP = "group"  # median-split groups (low, high)
VARIABLE = "variable"  # mediation: the observed variables (indicators and outcome)
VARIABLE_BIS = "variable_"  # mediation: the second axis of their cross-product matrix
YEAR_CONTRAST = "year_contrast"  # integrated BYM2: a city's years in orthonormal within contrasts
BYM2_EIGENVECTOR = "bym2_eigenvector"  # integrated BYM2: the city means in the graph's eigenbasis

# Outcome and treatment, as in the paper.
NQP = "nqp"
AGGLOMERATION = "agglomeration"

# Raw inputs of the location quotient (eq. 3).
DIGITAL_EMPLOYMENT = "digital_employment"
TOTAL_EMPLOYMENT = "total_employment"

# Controls (Table 2 order).
CONTROLS: tuple[str, ...] = ("develop", "unemployed", "finance", "human", "traffic", "support")

# The 16 NQP indicators of Table 1: (column, dimension, description, unit). All positive attributes.
NQP_INDICATORS: tuple[tuple[str, str, str, str], ...] = (
    ("emerging_industry_staff", "laborers", "Employees of listed firms in strategic emerging and future industries", "persons"),
    ("research_staff", "laborers", "Employees in scientific research and technical services", "10k persons"),
    ("avg_wage", "laborers", "Average wage of employed staff", "yuan"),
    ("consumption_pc", "laborers", "Urban per-capita consumption expenditure", "yuan"),
    ("telecom_volume", "objects", "Telecom business volume", "100m yuan"),
    ("ai_firm_share", "objects", "Share of artificial-intelligence firms among firms", "%"),
    ("robot_density", "objects", "Industrial robot installation density", "robots per 10k workers"),
    ("pollution_investment", "objects", "Investment in environmental pollution control", "100m yuan"),
    ("waste_treatment_rate", "objects", "Harmless treatment rate of domestic waste", "%"),
    ("emission_trading", "objects", "Carbon, energy-use-right and emission-right trading volume", "100m yuan"),
    ("green_invention_patents", "objects", "Green invention patent applications", "applications"),
    ("green_utility_patents", "objects", "Green utility-model patent applications", "applications"),
    ("broadband_users", "means", "Broadband internet subscribers", "10k households"),
    ("internet_penetration", "means", "Internet penetration", "%"),
    ("gov_science_spending", "means", "Government science and technology expenditure", "100m yuan"),
    ("gov_education_spending", "means", "Government education expenditure", "100m yuan"),
)
NQP_INDICATOR_NAMES: tuple[str, ...] = tuple(row[0] for row in NQP_INDICATORS)

# Mechanisms (Table 4): mechanism -> its two indicators.
MECHANISMS: dict[str, tuple[str, str]] = {
    "inno": ("inno_rd_staff", "inno_patents_pc"),
    "factor": ("factor_exchanges", "factor_pilots"),
    "industry": ("industry_tertiary_ratio", "industry_productivity"),
}
MECHANISM_INDICATORS: tuple[str, ...] = tuple(c for pair in MECHANISMS.values() for c in pair)

# Heterogeneity splitters (median splits, section 5.1). For every splitter, "high" is the group the
# paper expects the larger effect in; gov_dominance is reversed (market-dominated cities expected larger).
SPLITTERS: tuple[str, ...] = (
    "digital_support",
    "nqp_emphasis",
    "marketization",
    "market_integration",
    "gov_dominance",
)

# Instrument input: great-circle distance of the city seat to Hangzhou's seat (km).
DIST_HANGZHOU = "dist_hangzhou"

# Geography column (data/geography/cities.csv) holding each city's province.
PROVINCE = "province"

# The spatial autoregressive coefficient rho the paper reports (Table 5, spatial Durbin model); held
# against the admissible interval of W only when the data are the paper's design.
PAPER_RHO = -2.1086

# The four municipalities (dropped in one robustness check).
MUNICIPALITY_ADCODES: tuple[str, ...] = ("110000", "120000", "310000", "500000")

SYNTHETIC_BANNER = "SYNTHETIC DEMO DATA"

# Every dimension name a model may give its variables (dims= and coords of the PyMC builders); a test
# holds the builders to it. The province slopes model uses PROVINCE as its group dimension.
DIMS: tuple[str, ...] = (CITY, YEAR, COEF, MECHANISM, INDICATOR, OBS, EQUATION, EQUATION_BIS, FIRST_COEF, CONTROL,
                         MUNDLAK, GROUP, PROVINCE, VARIABLE, VARIABLE_BIS, YEAR_CONTRAST, BYM2_EIGENVECTOR)
